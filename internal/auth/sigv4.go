package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// SigV4 as ebb accepts it: algorithm AWS4-HMAC-SHA256, service "lambda" (the
// service AWS SDKs sign Lambda calls and IAM-authenticated function URLs
// for), any region. The expected signature is computed by the AWS SDK's own
// signer over a copy of the request that holds exactly the headers the client
// signed: ebb parses, the SDK signs, and the two signatures are compared in
// constant time.
const (
	sigV4Algorithm = "AWS4-HMAC-SHA256"
	sigV4Service   = "lambda"
	amzDateFormat  = "20060102T150405Z"
	// MaxClockSkew is how far a signature's time may be from ebb's clock.
	MaxClockSkew = 5 * time.Minute
	// maxPresignExpiry is the longest a presigned URL may be valid (AWS's).
	maxPresignExpiry = 7 * 24 * time.Hour
	unsignedPayload  = "UNSIGNED-PAYLOAD"
)

// SigV4Error is a refused SigV4 request, in the error types AWS SDKs parse.
// All are 403, as in AWS.
type SigV4Error struct {
	Type string // InvalidSignatureException, UnrecognizedClientException, IncompleteSignatureException
	Msg  string
}

func (e *SigV4Error) Error() string { return e.Type + ": " + e.Msg }

func invalidSignature(format string, args ...any) error {
	return &SigV4Error{"InvalidSignatureException", fmt.Sprintf(format, args...)}
}

func incomplete(format string, args ...any) error {
	return &SigV4Error{"IncompleteSignatureException", fmt.Sprintf(format, args...)}
}

var errUnrecognized = &SigV4Error{"UnrecognizedClientException", "The security token included in the request is invalid."}

// sigv4Request is what a SigV4 request claims, from its Authorization header
// or its query string.
type sigv4Request struct {
	accessKey, date, region, service string
	signedHeaders                    string
	signature                        string
	at                               time.Time
	presigned                        bool
	expires                          time.Duration
}

func isSigV4Header(authz string) bool {
	return len(authz) >= len(sigV4Algorithm) && strings.EqualFold(authz[:len(sigV4Algorithm)], sigV4Algorithm)
}

func isSigV4Query(rawQuery string) bool {
	return strings.Contains(rawQuery, "X-Amz-Signature=") || strings.Contains(rawQuery, "X-Amz-Credential=")
}

func parseCredential(s string, into *sigv4Request) error {
	parts := strings.Split(s, "/")
	if len(parts) != 5 || parts[4] != "aws4_request" || parts[0] == "" {
		return incomplete("Credential must be ACCESS_KEY/DATE/REGION/SERVICE/aws4_request")
	}
	into.accessKey, into.date, into.region, into.service = parts[0], parts[1], parts[2], parts[3]
	if into.service != sigV4Service {
		return invalidSignature("the credential's service is %q; ebb verifies signatures for service %q", into.service, sigV4Service)
	}
	if into.region == "" {
		return incomplete("the credential names no region")
	}
	return nil
}

func parseSigV4Header(authz string, h http.Header) (*sigv4Request, error) {
	rest := strings.TrimSpace(authz[len(sigV4Algorithm):])
	var q sigv4Request
	var cred string
	for _, f := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok {
			continue
		}
		switch k {
		case "Credential":
			cred = v
		case "SignedHeaders":
			q.signedHeaders = v
		case "Signature":
			q.signature = v
		}
	}
	if cred == "" || q.signedHeaders == "" || q.signature == "" {
		return nil, incomplete("Authorization header requires Credential, SignedHeaders and Signature")
	}
	if err := parseCredential(cred, &q); err != nil {
		return nil, err
	}
	d := h.Get("X-Amz-Date")
	if d == "" {
		return nil, incomplete("Authorization header requires an X-Amz-Date header")
	}
	t, err := time.Parse(amzDateFormat, d)
	if err != nil {
		return nil, incomplete("X-Amz-Date %q is not in the form 20060102T150405Z", d)
	}
	q.at = t
	return &q, nil
}

func parseSigV4Query(v url.Values) (*sigv4Request, error) {
	var q sigv4Request
	q.presigned = true
	if a := v.Get("X-Amz-Algorithm"); a != sigV4Algorithm {
		return nil, incomplete("X-Amz-Algorithm must be %s", sigV4Algorithm)
	}
	q.signedHeaders, q.signature = v.Get("X-Amz-SignedHeaders"), v.Get("X-Amz-Signature")
	if q.signedHeaders == "" || q.signature == "" {
		return nil, incomplete("a presigned URL requires X-Amz-SignedHeaders and X-Amz-Signature")
	}
	if err := parseCredential(v.Get("X-Amz-Credential"), &q); err != nil {
		return nil, err
	}
	t, err := time.Parse(amzDateFormat, v.Get("X-Amz-Date"))
	if err != nil {
		return nil, incomplete("X-Amz-Date is not in the form 20060102T150405Z")
	}
	q.at = t
	secs, err := strconv.Atoi(v.Get("X-Amz-Expires"))
	if err != nil || secs < 1 || time.Duration(secs)*time.Second > maxPresignExpiry {
		return nil, incomplete("X-Amz-Expires must be 1 to %d seconds", int(maxPresignExpiry/time.Second))
	}
	q.expires = time.Duration(secs) * time.Second
	return &q, nil
}

// checkTime applies the clock-skew and expiry rules.
func (q *sigv4Request) checkTime(now time.Time) error {
	if q.at.Format("20060102") != q.date {
		return invalidSignature("the credential's date %s is not the date of X-Amz-Date", q.date)
	}
	if q.at.After(now.Add(MaxClockSkew)) {
		return invalidSignature("Signature not yet current: %s is still later than %s", q.at.Format(amzDateFormat), now.Add(MaxClockSkew).UTC().Format(amzDateFormat))
	}
	limit := MaxClockSkew
	if q.presigned {
		limit = q.expires
	}
	if now.After(q.at.Add(limit)) {
		return invalidSignature("Signature expired: %s is now earlier than %s", q.at.Format(amzDateFormat), now.Add(-limit).UTC().Format(amzDateFormat))
	}
	return nil
}

// verifySigV4 checks q's signature of r (whose body hashes to bodyHash) with
// secret, by having the AWS SDK's signer sign the same canonical request.
func verifySigV4(r *http.Request, q *sigv4Request, secret, bodyHash string) error {
	if r.Header.Get("X-Amz-Security-Token") != "" || r.URL.Query().Get("X-Amz-Security-Token") != "" {
		return errUnrecognized // ebb issues no session credentials
	}
	hashes := []string{bodyHash}
	if c := r.Header.Get("X-Amz-Content-Sha256"); c != "" {
		switch {
		case c == unsignedPayload && q.presigned:
			hashes = []string{unsignedPayload}
		case !strings.EqualFold(c, bodyHash):
			return invalidSignature("X-Amz-Content-Sha256 does not match the body")
		}
	} else if q.presigned {
		hashes = append(hashes, unsignedPayload)
	}
	creds := aws.Credentials{AccessKeyID: q.accessKey, SecretAccessKey: secret}
	signer := v4.NewSigner(func(o *v4.SignerOptions) { o.DisableHeaderHoisting = true })
	for _, ph := range hashes {
		req, err := canonicalCopy(r, q)
		if err != nil {
			return err
		}
		var gotHeaders, gotSig string
		if q.presigned {
			signed, _, err := signer.PresignHTTP(context.Background(), creds, req, ph, q.service, q.region, q.at)
			if err != nil {
				return invalidSignature("the request cannot be signed: %v", err)
			}
			u, err := url.Parse(signed)
			if err != nil {
				return invalidSignature("the request cannot be signed")
			}
			gotHeaders, gotSig = u.Query().Get("X-Amz-SignedHeaders"), u.Query().Get("X-Amz-Signature")
		} else {
			if err := signer.SignHTTP(context.Background(), creds, req, ph, q.service, q.region, q.at); err != nil {
				return invalidSignature("the request cannot be signed: %v", err)
			}
			p, err := parseSigV4Header(req.Header.Get("Authorization"), req.Header)
			if err != nil {
				return err
			}
			gotHeaders, gotSig = p.signedHeaders, p.signature
		}
		if gotHeaders == strings.ToLower(q.signedHeaders) && subtle.ConstantTimeCompare([]byte(gotSig), []byte(q.signature)) == 1 {
			return nil
		}
	}
	return invalidSignature("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")
}

// canonicalCopy is r as the client signed it: the method, the path as sent,
// the query without the signature, and only the signed headers.
func canonicalCopy(r *http.Request, q *sigv4Request) (*http.Request, error) {
	u := *r.URL
	u.Scheme, u.Host, u.User = "", "", nil
	if q.presigned {
		v := r.URL.Query()
		v.Del("X-Amz-Signature")
		u.RawQuery = v.Encode()
	}
	req := &http.Request{Method: r.Method, URL: &u, Host: r.Host, Header: http.Header{}, Proto: r.Proto}
	for _, name := range strings.Split(q.signedHeaders, ";") {
		name = strings.ToLower(strings.TrimSpace(name))
		switch name {
		case "":
			return nil, incomplete("SignedHeaders has an empty name")
		case "host":
		case "content-length":
			req.ContentLength = r.ContentLength
		case "x-amz-date":
			// The signer sets it from the signing time.
		default:
			ck := textproto.CanonicalMIMEHeaderKey(name)
			vals, ok := r.Header[ck]
			if !ok {
				return nil, invalidSignature("signed header %q is not in the request", name)
			}
			req.Header[ck] = vals
		}
	}
	return req, nil
}

// hashBody returns the hex sha256 of b.
func hashBody(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
