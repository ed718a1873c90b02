package gateway

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/route"
)

// lambdaInvoke serves the Lambda Invoke API, so that AWS SDKs and the AWS CLI
// (with --endpoint-url) can call ebb functions. As in Lambda, a function error
// is a 200 with X-Amz-Function-Error; service errors use Lambda's names.
func (g *Gateway) lambdaInvoke(w http.ResponseWriter, r *http.Request) {
	target, err := lambdaTarget(r)
	name := target.Name
	rid := NewRequestID()
	h := w.Header()
	h.Set("X-Amzn-Requestid", rid)
	h.Set("Ebb-Request-Id", rid)
	if err != nil {
		g.fail(w, route.Lambda, name, err)
		return
	}
	switch t := r.Header.Get("X-Amz-Invocation-Type"); t {
	case "", "RequestResponse":
	case "Event":
		g.enqueue(w, r, target, rid, route.Lambda)
		return
	case "DryRun":
		if _, err := g.cfg.Backend.Runtime(target); err != nil {
			g.fail(w, route.Lambda, name, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	default:
		g.fail(w, route.Lambda, name, &BadRequestError{"invocation type " + strconv.Quote(t) + " is not supported here"})
		return
	}
	tail := false
	switch lt := r.Header.Get("X-Amz-Log-Type"); lt {
	case "", "None":
	case "Tail":
		tail = g.cfg.Catalog != nil
	default:
		g.fail(w, route.Lambda, name, &BadRequestError{"log type " + strconv.Quote(lt) + " is not None or Tail"})
		return
	}
	payload, err := g.readPayload(w, r)
	if err != nil {
		g.fail(w, route.Lambda, name, err)
		return
	}
	var mark uint64
	ctx := r.Context()
	if tail {
		mark = g.cfg.Catalog.LogMark(name)
		ctx = ebb.WithLogSync(ctx) // the answer waits for the handler's lines
	}
	res, err := g.cfg.Backend.Invoke(ctx, target, rid, payload)
	if res != nil {
		h.Set("Ebb-Cold-Start", strconv.FormatBool(res.ColdStart))
		h.Set("Ebb-Version", strconv.Itoa(res.Version))
		h.Set("X-Amz-Executed-Version", strconv.Itoa(res.Version))
	}
	if tail && (res != nil || err == nil || isFunctionError(err)) {
		h.Set("X-Amz-Log-Result", base64.StdEncoding.EncodeToString(g.cfg.Catalog.Tail(r.Context(), name, rid, mark)))
	}
	var body []byte
	if err != nil {
		_, eb, _ := Classify(err)
		if !isFunctionError(err) {
			g.fail(w, route.Lambda, name, err)
			return
		}
		// The function failed: Lambda answers 200 and says so in a header.
		h.Set("X-Amz-Function-Error", "Unhandled")
		body, _ = json.Marshal(eb)
	} else {
		body = res.Body
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// isFunctionError says whether err is the function's failure (a 200 with
// X-Amz-Function-Error in Lambda) rather than the service's.
func isFunctionError(err error) bool {
	status, _, _ := Classify(err)
	return status == http.StatusInternalServerError || status == http.StatusBadGateway || status == http.StatusGatewayTimeout
}

// LambdaName accepts a name, name:qualifier, or a function ARN, and
// returns the function's name.
func LambdaName(s string) string {
	name, _ := lambdaQualified(s)
	return name
}

// lambdaQualified splits a Lambda FunctionName (a name, name:qualifier, or
// a function ARN with or without a qualifier) into name and qualifier.
func lambdaQualified(s string) (name, qualifier string) {
	if strings.HasPrefix(s, "arn:") {
		parts := strings.Split(s, ":")
		if len(parts) >= 7 {
			if len(parts) >= 8 {
				qualifier = parts[7]
			}
			return parts[6], qualifier
		}
	}
	return ebb.SplitQualified(s)
}

// lambdaTarget reads an Invoke's target: the FunctionName's qualifier or
// the Qualifier query parameter (both only when they agree, as in Lambda).
func lambdaTarget(r *http.Request) (Target, error) {
	name, q := lambdaQualified(r.PathValue("name"))
	t := Target{Name: name, Qualifier: q, Key: r.Header.Get(ebb.RoutingKeyHeader)}
	if qp := r.URL.Query().Get("Qualifier"); qp != "" {
		if q != "" && q != qp {
			return t, &BadRequestError{"the qualifier in FunctionName (" + strconv.Quote(q) + ") and the Qualifier parameter (" + strconv.Quote(qp) + ") differ"}
		}
		t.Qualifier = qp
	}
	return t, nil
}

// functionURL serves ANY /fn/{name}/{path...}. http functions get the request
// as it is (with the /fn/{name} prefix removed); exec and python functions get
// a Lambda function URL event (payload format 2.0) and answer with
// {statusCode, headers, body}, as behind a Lambda function URL.
func (g *Gateway) functionURL(w http.ResponseWriter, r *http.Request) {
	t := targetOf(r, r.PathValue("name"))
	rt, err := g.cfg.Backend.Runtime(t)
	if err != nil {
		g.fail(w, route.Native, t.Name, err)
		return
	}
	rid := NewRequestID()
	w.Header()["Ebb-Request-Id"] = []string{rid}
	if rt == ebb.RuntimeHTTP || rt == ebb.RuntimeONNX {
		g.proxy(w, r, t, "/"+r.PathValue("path"), rid)
		return
	}
	g.urlEvent(w, r, t, rid)
}

// inference routes the Open Inference Protocol's /v2/models/{model}/... to the
// onnx function of that name. /v2/models/{model}/versions/{version}/...
// addresses one of its versions or aliases; the instance, which serves one
// model, gets the path without it.
func (g *Gateway) inference(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	t := Target{Name: name, Key: r.Header.Get(ebb.RoutingKeyHeader)}
	path := r.URL.Path
	if rest, ok := strings.CutPrefix(r.PathValue("rest"), "versions/"); ok {
		v, tail, _ := strings.Cut(rest, "/")
		if v == "" {
			route.Write(w, route.OIP, &route.Error{Status: http.StatusNotFound, Type: "ResourceNotFound", Message: "no model version in " + r.URL.Path})
			return
		}
		t.Qualifier = v
		path = "/v2/models/" + name
		if tail != "" {
			path += "/" + tail
		}
	}
	rt, err := g.cfg.Backend.Runtime(t)
	if err == nil && rt != ebb.RuntimeONNX {
		err = ebb.ErrNotFound
	}
	if err != nil {
		if errors.Is(err, ebb.ErrNotFound) {
			msg := "model " + strconv.Quote(name) + " not found"
			if nf := (*ebb.NotFoundError)(nil); errors.As(err, &nf) {
				msg = "model " + strconv.Quote(name) + " has no version or alias " + strconv.Quote(t.Qualifier)
			}
			route.Write(w, route.OIP, &route.Error{Status: http.StatusNotFound, Type: "ResourceNotFound", Message: msg})
			return
		}
		g.fail(w, route.OIP, name, err)
		return
	}
	rid := NewRequestID()
	w.Header()["Ebb-Request-Id"] = []string{rid}
	g.proxy(w, r, t, path, rid)
}

func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request, t Target, path, rid string) {
	name := t.Name
	if r.ContentLength > g.cfg.MaxSyncPayload {
		g.fail(w, route.Native, name, ebb.ErrPayloadTooLarge)
		return
	}
	if r.ContentLength < 0 {
		r.Body = http.MaxBytesReader(w, r.Body, g.cfg.MaxSyncPayload)
	}
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = &clientBody{r.Body}
	}
	// The request is ours to rewrite: the proxy copies it for the instance.
	r.URL.Path = path
	r.URL.RawPath = ""
	r.Header["Ebb-Request-Id"] = []string{rid}
	err := g.cfg.Backend.Proxy(r.Context(), t, rid, w, r, func(cold bool, version int) {
		h := w.Header()
		h["Ebb-Cold-Start"] = []string{strconv.FormatBool(cold)}
		h["Ebb-Version"] = []string{strconv.Itoa(version)}
	})
	if err != nil && !errors.Is(err, ebb.ErrResponseStarted) {
		g.fail(w, route.Native, name, err)
	}
}

// urlEvent is the Lambda function URL payload format 2.0.
type urlEvent struct {
	Version         string            `json:"version"`
	RouteKey        string            `json:"routeKey"`
	RawPath         string            `json:"rawPath"`
	RawQueryString  string            `json:"rawQueryString"`
	Cookies         []string          `json:"cookies,omitempty"`
	Headers         map[string]string `json:"headers"`
	QueryParameters map[string]string `json:"queryStringParameters,omitempty"`
	RequestContext  urlRequestContext `json:"requestContext"`
	Body            string            `json:"body,omitempty"`
	IsBase64Encoded bool              `json:"isBase64Encoded"`
}

type urlRequestContext struct {
	AccountID  string `json:"accountId"`
	APIID      string `json:"apiId"`
	DomainName string `json:"domainName"`
	RequestID  string `json:"requestId"`
	RouteKey   string `json:"routeKey"`
	Stage      string `json:"stage"`
	Time       string `json:"time"`
	TimeEpoch  int64  `json:"timeEpoch"`
	HTTP       struct {
		Method    string `json:"method"`
		Path      string `json:"path"`
		Protocol  string `json:"protocol"`
		SourceIP  string `json:"sourceIp"`
		UserAgent string `json:"userAgent"`
	} `json:"http"`
}

type urlResponse struct {
	StatusCode      int               `json:"statusCode"`
	Headers         map[string]string `json:"headers"`
	Body            string            `json:"body"`
	IsBase64Encoded bool              `json:"isBase64Encoded"`
	Cookies         []string          `json:"cookies"`
}

func (g *Gateway) urlEvent(w http.ResponseWriter, r *http.Request, t Target, rid string) {
	name := t.Name
	body, err := readAllLimit(r, g.cfg.MaxSyncPayload)
	if err != nil {
		g.fail(w, route.Native, name, err)
		return
	}
	now := time.Now()
	ev := urlEvent{Version: "2.0", RouteKey: "$default", RawPath: "/" + r.PathValue("path"), RawQueryString: r.URL.RawQuery,
		Headers: map[string]string{}}
	for k, v := range r.Header {
		if strings.EqualFold(k, "Cookie") {
			ev.Cookies = append(ev.Cookies, splitCookies(v)...)
			continue
		}
		ev.Headers[strings.ToLower(k)] = strings.Join(v, ",")
	}
	if q := r.URL.Query(); len(q) > 0 {
		ev.QueryParameters = map[string]string{}
		for k, v := range q {
			ev.QueryParameters[k] = strings.Join(v, ",")
		}
	}
	rc := &ev.RequestContext
	rc.AccountID, rc.APIID, rc.DomainName, rc.RequestID, rc.RouteKey, rc.Stage = "anonymous", name, r.Host, rid, "$default", "$default"
	rc.Time, rc.TimeEpoch = now.UTC().Format("02/Jan/2006:15:04:05 -0700"), now.UnixMilli()
	rc.HTTP.Method, rc.HTTP.Path, rc.HTTP.Protocol, rc.HTTP.SourceIP, rc.HTTP.UserAgent = r.Method, ev.RawPath, r.Proto, clientIP(r), r.UserAgent()
	if utf8.Valid(body) {
		ev.Body = string(body)
	} else {
		ev.Body, ev.IsBase64Encoded = base64.StdEncoding.EncodeToString(body), true
	}
	payload, _ := json.Marshal(ev)
	res, err := g.cfg.Backend.Invoke(r.Context(), t, rid, payload)
	if res != nil {
		w.Header().Set("Ebb-Cold-Start", strconv.FormatBool(res.ColdStart))
		w.Header().Set("Ebb-Version", strconv.Itoa(res.Version))
	}
	if err != nil {
		g.fail(w, route.Native, name, err)
		return
	}
	ur, err := decodeURLResult(res.Body)
	if err != nil {
		g.fail(w, route.Native, name, err)
		return
	}
	for _, d := range ur.dropped {
		g.cfg.Logger.Warn("dropped a function response header", "function", name, "request_id", rid, "field", d.Name, "reason", d.Reason)
	}
	wh := w.Header()
	for k, v := range ur.header {
		wh[k] = v
	}
	wh["Content-Length"] = []string{strconv.Itoa(len(ur.body))}
	w.WriteHeader(ur.status)
	w.Write(ur.body)
}

func readAllLimit(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, ebb.ErrPayloadTooLarge
	}
	return readBody(r.Body, r.ContentLength, max)
}

func clientIP(r *http.Request) string {
	host := r.RemoteAddr
	if i := strings.LastIndexByte(host, ':'); i > 0 {
		host = host[:i]
	}
	return strings.Trim(host, "[]")
}
