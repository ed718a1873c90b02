package instance

import (
	"errors"
	"net/http"
	"time"
)

// Proxy forwards r to the instance and writes its response to w. When the
// instance could not answer, nothing is written and the error is returned for
// the caller to turn into a response; an error wrapping
// ebb.ErrResponseStarted means the response was cut after it had begun.
// The instance must answer by deadline; past it the error wraps
// context.DeadlineExceeded.
func (i *Instance) Proxy(w http.ResponseWriter, r *http.Request, deadline time.Time) error {
	if i.up == nil {
		return errors.New("proxy: function does not serve HTTP")
	}
	rid := r.Header.Get("Ebb-Request-Id")
	i.begin(&rid)
	defer i.end(&rid)
	return i.up.Forward(w, r, deadline)
}
