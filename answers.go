package main

// What the client is answered when there is no object to stream: the one
// place an error becomes a status and a body, as httputil.ReverseProxy's
// error handler is. The body is S3-shaped (application/xml,
// <Error><Code>…</Code><Message>…</Message></Error>, Amazon S3 API
// Reference, "Error responses"), so an S3 client configured without
// signing (boto3 with UNSIGNED, GDAL's /vsis3/ with AWS_NO_SIGN_REQUEST,
// rclone) reads the code S3 gave, NoSuchKey rather than "404"; nginx-vod
// reads only the status. Of S3's own error body only its code passes, a
// plain word: its RequestId, HostId, StringToSign and CanonicalRequest can
// hold the session token, and its Message is S3's to word, not ours to
// echo.

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// statusClientGone is nginx's 499: the client closed the connection before
// the answer, so nothing is written; it appears in logs and metrics only.
const statusClientGone = 499

// errMethodNotAllowed rejects every method but GET and HEAD.
var errMethodNotAllowed = errors.New("method not allowed: read-only")

// s3Refusal is S3's own error answer, passed on to the client.
type s3Refusal struct {
	status int
	s3     s3ErrorDetails
}

// Error says what S3 answered, and the fix when S3 says the bucket is in
// another region.
func (e *s3Refusal) Error() string {
	msg := "S3 answered " + strconv.Itoa(e.status)
	if e.s3.code != "" {
		msg += " " + e.s3.code
	}
	if hint := regionHint(e.status, e.s3); hint != "" {
		msg += ": " + hint
	}
	return msg
}

// clientAnswer is an error as the client sees it.
type clientAnswer struct {
	status        int
	code, message string
	// cause is what the log line says; the error itself but for a cut.
	cause error
}

// answerFor is the one place an error becomes the client's answer.
// cutting is set while s3-helper cuts the requests still in flight at
// shutdown: a request that ended then was cut by s3-helper, not left by
// its client, and bytes is how far it got.
func answerFor(err error, cutting bool, bytes int64) clientAnswer {
	var refusal *s3Refusal
	if errors.As(err, &refusal) {
		return s3Answer(refusal)
	}
	var perr *proxyError
	if !errors.As(err, &perr) {
		perr = &proxyError{kind: kindInternal, err: err}
	}
	switch perr.kind {
	case kindClientGone:
		if cutting {
			return clientAnswer{http.StatusServiceUnavailable, "ServiceUnavailable", "s3-helper is shutting down.",
				fmt.Errorf("cut at shutdown after %d bytes: -shutdown-timeout expired while the request was in flight", bytes)}
		}
		return clientAnswer{statusClientGone, "", "", err}
	case kindClient:
		a := rejection(perr.err)
		a.cause = err
		return a
	case kindCredentials:
		return clientAnswer{http.StatusServiceUnavailable, "ServiceUnavailable", "s3-helper has no credentials to sign with.", err}
	case kindTimeout:
		return clientAnswer{http.StatusGatewayTimeout, "GatewayTimeout", "S3 did not answer in time.", err}
	case kindConnect, kindTransport:
		return clientAnswer{http.StatusBadGateway, "BadGateway", "S3 could not be reached.", err}
	}
	return clientAnswer{http.StatusBadGateway, "InternalError", "s3-helper could not get S3's answer.", err}
}

// rejections answer the requests s3-helper refuses, by cause, generically:
// a message never echoes the client's input.
var rejections = [...]struct {
	cause error
	clientAnswer
}{
	{errMethodNotAllowed, clientAnswer{status: http.StatusMethodNotAllowed, code: "MethodNotAllowed", message: "The specified method is not allowed against this resource."}},
	{errHeaderTooLarge, clientAnswer{status: http.StatusRequestHeaderFieldsTooLarge, code: "RequestHeaderSectionTooLarge", message: "Your request header section exceeds the maximum allowed size."}},
	{errNoKey, clientAnswer{status: http.StatusNotFound, code: "NoSuchKey", message: "The specified key does not exist."}},
	{errInvalidKey, clientAnswer{status: http.StatusBadRequest, code: "InvalidArgument", message: "Invalid object key."}},
	{errBadQuery, clientAnswer{status: http.StatusBadRequest, code: "InvalidArgument", message: "Invalid query string."}},
	{errBadRequestHeader, clientAnswer{status: http.StatusBadRequest, code: "InvalidArgument", message: "Invalid request header."}},
}

// rejection answers a request s3-helper refused.
func rejection(err error) clientAnswer {
	for _, r := range rejections {
		if errors.Is(err, r.cause) {
			return r.clientAnswer
		}
	}
	return clientAnswer{status: http.StatusBadRequest, code: "InvalidRequest", message: "Request not allowed."}
}

// s3Messages are the messages for S3's codes: S3's own words for the
// answers about the object, and what the code means here for those about
// s3-helper's signature (the client did not sign).
var s3Messages = map[string]string{
	"NoSuchKey":                    "The specified key does not exist.",
	"NoSuchBucket":                 "The specified bucket does not exist.",
	"NoSuchVersion":                "The specified version does not exist.",
	"AccessDenied":                 "Access Denied",
	"PreconditionFailed":           "At least one of the preconditions you specified did not hold.",
	"InvalidRange":                 "The requested range is not satisfiable.",
	"InvalidArgument":              "Invalid argument.",
	"InvalidObjectState":           "The operation is not valid for the object's storage class.",
	"SlowDown":                     "Please reduce your request rate.",
	"ServiceUnavailable":           "Please reduce your request rate.",
	"InternalError":                "We encountered an internal error. Please try again.",
	"SignatureDoesNotMatch":        "S3 refused s3-helper's signature.",
	"InvalidAccessKeyId":           "S3 refused s3-helper's credentials.",
	"ExpiredToken":                 "S3 refused s3-helper's credentials.",
	"InvalidToken":                 "S3 refused s3-helper's credentials.",
	"RequestTimeTooSkewed":         "S3 refused s3-helper's clock.",
	"AuthorizationHeaderMalformed": "The bucket is not in s3-helper's signing region.",
}

// codeForStatus is S3's code for an error answer that came without one (a
// HEAD has no body).
var codeForStatus = map[int]string{
	http.StatusBadRequest:                   "InvalidRequest",
	http.StatusForbidden:                    "AccessDenied",
	http.StatusNotFound:                     "NoSuchKey",
	http.StatusPreconditionFailed:           "PreconditionFailed",
	http.StatusRequestedRangeNotSatisfiable: "InvalidRange",
	http.StatusInternalServerError:          "InternalError",
	http.StatusServiceUnavailable:           "ServiceUnavailable",
}

// s3Answer passes S3's error answer on with S3's status and code, but for
// a redirect: S3 sends one when the bucket is in another region, which is
// s3-helper's misconfiguration and nothing nginx can follow, so a 502
// InternalError. Not S3's PermanentRedirect: botocore's region redirector
// would take it for its own bucket's and look for the bucket's region
// through s3-helper on every try.
func s3Answer(e *s3Refusal) clientAnswer {
	a := clientAnswer{status: e.status, code: e.s3.code, cause: e}
	if a.status < 400 { // 301 PermanentRedirect, 307 TemporaryRedirect
		return clientAnswer{http.StatusBadGateway, "InternalError", "s3-helper is misconfigured: S3 redirected it (the bucket is in another region, or -endpoint is wrong).", e}
	}
	if a.code == "" {
		a.code = codeForStatus[a.status]
	}
	if a.code == "" {
		a.code = strings.ReplaceAll(http.StatusText(a.status), " ", "")
	}
	a.message = s3Messages[a.code]
	if a.message == "" {
		a.message = "S3 answered " + strconv.Itoa(e.status) + " " + a.code + "."
	}
	return a
}

// body is the S3-shaped error document. Codes are plain words (ours, or
// S3's checked by plainWord) and messages are ours: nothing to escape.
func (a clientAnswer) body() string {
	return `<?xml version="1.0" encoding="UTF-8"?>` + "\n<Error><Code>" + a.code + "</Code><Message>" + a.message + "</Message></Error>\n"
}
