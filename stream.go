package main

// Streaming S3's body to the client: the buffers it is copied through
// (the lean client borrows its heads' from the same kind of pool), the
// watch that ends an attempt when S3 stalls (time spent writing to a slow
// client never counts), and the plan that continues a response with a
// ranged request pinned by If-Match when S3 fails mid-body. Nothing here
// knows the proxy; proxy.go's stream drives the loop.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errBodyStalled is the cause when S3 sends no body bytes for -timeout.
var errBodyStalled = errors.New("upstream body stalled")

// watchBody cancels the attempt (and so unblocks the read) when one read of
// the body waits bodyTimeout for S3: ResponseHeaderTimeout covers only the
// wait for headers, and a stalled body would otherwise hold the client
// forever. Only time blocked on S3 counts: while s3-helper writes to a slow
// or paused client (a paused player, nginx with proxy_buffering off) the
// watch is off. Closing the body ends the attempt.
func watchBody(body io.ReadCloser, cancel context.CancelFunc, bodyTimeout time.Duration) io.ReadCloser {
	b := &attemptBody{ReadCloser: body, cancel: cancel, timeout: bodyTimeout}
	if bodyTimeout > 0 {
		b.timer = time.AfterFunc(bodyTimeout, func() {
			b.stalled.Store(true)
			cancel()
		})
		b.timer.Stop() // armed only inside Read
	}
	return b
}

// attemptBody is an upstream body bound to its attempt's cancel function.
type attemptBody struct {
	io.ReadCloser
	cancel  context.CancelFunc
	timeout time.Duration
	// timer cancels the attempt when a Read waits longer than timeout; nil
	// when reads are not watched.
	timer   *time.Timer
	stalled atomic.Bool
}

// Read arms the stall timer for the duration of one read from S3 and names
// a stall as the cause.
func (b *attemptBody) Read(p []byte) (int, error) {
	if b.timer == nil {
		return b.ReadCloser.Read(p)
	}
	b.timer.Reset(b.timeout)
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF && b.stalled.Load() {
		err = fmt.Errorf("%w: no bytes for %v", errBodyStalled, b.timeout)
	}
	return n, err
}

// Close ends the attempt.
func (b *attemptBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// bufferPool lends byte buffers of one size, the size each call names.
type bufferPool struct{ pool sync.Pool }

// lend borrows a buffer of size bytes.
func (p *bufferPool) lend(size int) *[]byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, size)
	return &b
}

// takeBack returns a lent buffer; one grown past size (for a large
// response head) is left to the collector.
func (p *bufferPool) takeBack(b *[]byte, size int) {
	if len(*b) == size {
		p.pool.Put(b)
	}
}

// errClientWrite marks a failed write to the client.
var errClientWrite = errors.New("write to client")

// copyBody copies src to w with buf. A nil error means src ended cleanly.
func copyBody(w io.Writer, src io.Reader, buf []byte) (int64, error) {
	var written int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			written += int64(m)
			if werr == nil && m < n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return written, fmt.Errorf("%w: %w", errClientWrite, werr)
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// resumePlan is the byte range a response covers, for continuing it.
type resumePlan struct {
	etag string
	// first and last are the absolute offsets of the response's first and
	// last byte; last is -1 when the length is unknown.
	first, last int64
	// done is how many bytes were delivered.
	done int64
}

// complete reports whether every byte of a known-length response was delivered.
func (r *resumePlan) complete() bool { return r.last >= 0 && r.first+r.done > r.last }

// planResume reads the ETag and range of a 200 or 206; resuming without an
// ETag could splice two versions of an object, so it is not attempted.
func planResume(resp *http.Response) (resumePlan, bool) {
	plan := resumePlan{etag: resp.Header.Get("Etag"), last: -1}
	if plan.etag == "" || strings.HasPrefix(plan.etag, "W/") {
		return plan, false
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength >= 0 {
			plan.last = resp.ContentLength - 1
		}
		return plan, true
	case http.StatusPartialContent:
		first, last, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok {
			return plan, false
		}
		plan.first, plan.last = first, last
		return plan, true
	}
	return plan, false
}

// parseContentRange parses "bytes FIRST-LAST/TOTAL" (TOTAL may be "*").
func parseContentRange(v string) (first, last int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	span, _, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return 0, 0, false
	}
	return first, last, true
}

// errObjectChanged is returned when a resume finds another object version.
var errObjectChanged = errors.New("object changed during the response (If-Match failed)")

// restOfResponse asks S3 for the bytes of a response not yet delivered:
// a Range from the next byte, pinned by If-Match to the same version.
type restOfResponse struct {
	rangeHeader, etag string
}

// rest describes the bytes not yet delivered.
func (r *resumePlan) rest() *restOfResponse {
	rng := "bytes=" + strconv.FormatInt(r.first+r.done, 10) + "-"
	if r.last >= 0 {
		rng += strconv.FormatInt(r.last, 10)
	}
	return &restOfResponse{rangeHeader: rng, etag: r.etag}
}

// acceptRest checks that S3 answered the request for rest() with exactly
// the bytes asked for: resp is S3's 2xx response, or nil with S3's error
// status. On success it returns the body to continue with.
func (r *resumePlan) acceptRest(resp *http.Response, status int) (io.ReadCloser, error) {
	switch {
	case status == http.StatusPreconditionFailed:
		return nil, errObjectChanged
	case resp == nil:
		return nil, fmt.Errorf("resume answered %d, want 206", status)
	case resp.StatusCode != http.StatusPartialContent:
		resp.Body.Close()
		return nil, fmt.Errorf("resume answered %d, want 206", resp.StatusCode)
	}
	first, last, ok := parseContentRange(resp.Header.Get("Content-Range"))
	if !ok || first != r.first+r.done || r.last >= 0 && last != r.last {
		resp.Body.Close()
		return nil, fmt.Errorf("resume answered Content-Range %q, want the rest from byte %d", resp.Header.Get("Content-Range"), r.first+r.done)
	}
	return resp.Body, nil
}
