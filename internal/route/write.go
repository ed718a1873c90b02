package route

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Dialect is the error shape of a protocol.
type Dialect uint8

const (
	// Native is ebb's own and Lambda's function error shape:
	// {"errorType", "errorMessage"}.
	Native Dialect = iota
	// Lambda is the Lambda service API's: X-Amzn-Errortype and
	// {"Type", "message", "__type"}, which AWS SDKs parse.
	Lambda
	// OIP is the Open Inference Protocol's: {"error"}.
	OIP
)

// Error is a refusal or failure the client is told about. Message is for
// the client: never a stack or a server path.
type Error struct {
	Status  int
	Type    string // ebb's type (native); the Lambda dialect maps it
	Message string
	// RetryAfter, when positive, is sent as Retry-After (whole seconds,
	// at least 1).
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Type + ": " + e.Message }

// lambdaTypes maps ebb's error types to the Lambda API's exception names.
var lambdaTypes = map[string]string{
	"ResourceNotFound":      "ResourceNotFoundException",
	"InvalidRequestContent": "InvalidRequestContentException",
	"RequestTooLarge":       "RequestTooLargeException",
	"TooManyRequests":       "TooManyRequestsException",
	"AccessDenied":          "AccessDeniedException",
	"Unauthorized":          "UnrecognizedClientException",
	"NotFound":              "ResourceNotFoundException",
	"MethodNotAllowed":      "InvalidRequestContentException",
	"MisdirectedRequest":    "InvalidRequestContentException",
}

// LambdaType is the Lambda API exception name for an ebb error type.
func LambdaType(status int, typ string) string {
	if strings.HasSuffix(typ, "Exception") {
		return typ
	}
	if t := lambdaTypes[typ]; t != "" {
		return t
	}
	switch status {
	case http.StatusBadRequest:
		return "InvalidRequestContentException"
	case http.StatusNotFound:
		return "ResourceNotFoundException"
	case http.StatusRequestEntityTooLarge:
		return "RequestTooLargeException"
	case http.StatusTooManyRequests:
		return "TooManyRequestsException"
	}
	return "ServiceException"
}

// Write is the one error writer: e in the shape of dialect d.
func Write(w http.ResponseWriter, d Dialect, e *Error) {
	h := w.Header()
	if e.RetryAfter > 0 || e.Status == http.StatusTooManyRequests {
		secs := int((e.RetryAfter + time.Second - 1) / time.Second)
		h.Set("Retry-After", strconv.Itoa(max(secs, 1)))
	}
	switch d {
	case Lambda:
		typ := LambdaType(e.Status, e.Type)
		h.Set("X-Amzn-Errortype", typ)
		JSON(w, e.Status, lambdaBody{Type: "User", Message: e.Message, AWSType: typ})
	case OIP:
		JSON(w, e.Status, oipBody{Error: e.Message})
	default:
		JSON(w, e.Status, nativeBody{Type: e.Type, Message: e.Message})
	}
}

type nativeBody struct {
	Type    string `json:"errorType"`
	Message string `json:"errorMessage"`
}

type lambdaBody struct {
	Type    string `json:"Type"`
	Message string `json:"message"`
	AWSType string `json:"__type"`
}

type oipBody struct {
	Error string `json:"error"`
}

// JSON is the one JSON writer: v, a newline, and its length.
func JSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v, false) }

// Pretty is JSON indented, for the management API, which people read too.
func Pretty(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v, true) }

func writeJSON(w http.ResponseWriter, status int, v any, indent bool) {
	var b []byte
	var err error
	if indent {
		b, err = json.MarshalIndent(v, "", "  ")
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"errorType":"Ebb.InternalError","errorMessage":"internal error"}`)
	}
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(b) + 1)}
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
