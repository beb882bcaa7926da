package main

// The body on its way to the client: a paused client is not a stalled S3, a
// stalled or broken S3 body is resumed byte-exactly or the response is
// aborted, never cut short silently.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// cutAfter answers with the object's headers but only n body bytes, then
// kills the connection.
func cutAfter(w http.ResponseWriter, r *http.Request, obj fakeObject, n int, withETag bool) {
	first, last := int64(0), int64(len(obj.body)-1)
	status := http.StatusOK
	if rng := r.Header.Get("Range"); rng != "" {
		a, b, _ := strings.Cut(strings.TrimPrefix(rng, "bytes="), "-")
		fmt.Sscan(a, &first)
		if b != "" {
			fmt.Sscan(b, &last)
		}
		status = http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(obj.body)))
	}
	if withETag {
		w.Header().Set("Etag", obj.etag)
	}
	part := obj.body[first : last+1]
	w.Header().Set("Content-Length", fmt.Sprint(len(part)))
	w.WriteHeader(status)
	w.Write(part[:min(n, len(part))])
	w.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

func TestProxyMidBodyAbortWithoutETag(t *testing.T) {
	tp := newTestProxy(t)
	body := bytes.Repeat([]byte("x"), 100_000)
	tp.s3.put("k", body)
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		tp.s3.mu.Lock()
		obj := tp.s3.objects["k"]
		tp.s3.mu.Unlock()
		cutAfter(w, r, obj, 40_000, false)
		return true
	}
	resp, err := http.Get(tp.url + "/k")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("client read %d bytes with no error: a truncated body looked complete", len(got))
	}
	if len(tp.s3.received()) != 1 {
		t.Errorf("upstream requests = %d, want 1: no retry after the first byte", len(tp.s3.received()))
	}
}

// TestProxyResumesMidBody: resets at random offsets, whole-object and
// Range GETs, must still give byte-identical bodies.
func TestProxyResumesMidBody(t *testing.T) {
	body := make([]byte, 300_000)
	for i := range body {
		body[i] = byte(rand.IntN(256))
	}
	for _, tt := range clientRanges(body, 250999) {
		t.Run(tt.name, func(t *testing.T) {
			tp := newTestProxy(t)
			tp.upstream.policy.limit = 10
			tp.s3.put("v.mp4", body)
			var cuts atomic.Int64
			tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n > 4 {
					return false
				}
				if n > 1 {
					var first, last int
					fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last)
					clientFirst, clientLast := 0, len(body)-1
					if tt.rangeHeader != "" {
						fmt.Sscanf(tt.rangeHeader, "bytes=%d-%d", &clientFirst, &clientLast)
					}
					if first <= clientFirst || last != clientLast {
						t.Errorf("resume range %d-%d is not a tail of the client's range %d-%d", first, last, clientFirst, clientLast)
					}
					if r.Header.Get("If-Match") == "" {
						t.Error("resume without If-Match")
					}
				}
				tp.s3.mu.Lock()
				obj := tp.s3.objects["v.mp4"]
				tp.s3.mu.Unlock()
				cuts.Add(1)
				cutAfter(w, r, obj, 1+rand.IntN(60_000), true)
				return true
			}
			h := http.Header{}
			if tt.rangeHeader != "" {
				h.Set("Range", tt.rangeHeader)
			}
			resp, got := get(t, "GET", tp.url+"/v.mp4", h)
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("body differs: got %d bytes, want %d (status %d)", len(got), len(tt.want), resp.StatusCode)
			}
			if cuts.Load() != 4 || !tp.logs.waitFor("resumes=4") {
				t.Errorf("cuts = %d; log:\n%s", cuts.Load(), tp.logs)
			}
			// The access log names what the client got and S3's status on
			// the response it started from, not the last resume's 206.
			want := fmt.Sprintf("status=%d upstream_status=%d", resp.StatusCode, resp.StatusCode)
			if !strings.Contains(tp.logs.String(), want) {
				t.Errorf("access log lacks %q:\n%s", want, tp.logs)
			}
		})
	}
}

func TestProxyResumeAbortsWhenObjectChanged(t *testing.T) {
	tp := newTestProxy(t)
	tp.s3.put("v.mp4", bytes.Repeat([]byte("a"), 100_000))
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if n == 1 {
			tp.s3.mu.Lock()
			obj := tp.s3.objects["v.mp4"]
			tp.s3.mu.Unlock()
			tp.s3.put("v.mp4", bytes.Repeat([]byte("b"), 100_000)) // replaced mid-response
			cutAfter(w, r, obj, 30_000, true)
			return true
		}
		return false
	}
	resp, err := http.Get(tp.url + "/v.mp4")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("client read %d bytes without error after the object changed", len(got))
	}
	if bytes.Contains(got, []byte("b")) {
		t.Error("the response mixed two object versions")
	}
	if !tp.logs.waitFor("object changed") {
		t.Errorf("log does not name the cause:\n%s", tp.logs)
	}
}

// stallAfter sends half the object (with its ETag) and then nothing.
func stallAfter(w http.ResponseWriter, r *http.Request, obj fakeObject, n int) {
	w.Header().Set("Etag", obj.etag)
	w.Header().Set("Content-Length", fmt.Sprint(len(obj.body)))
	w.WriteHeader(200)
	w.Write(obj.body[:n])
	w.(http.Flusher).Flush()
	<-r.Context().Done()
}

func TestProxyStallMidBodyResumes(t *testing.T) {
	tp := newTestProxy(t)
	tp.upstream.timeout = 150 * time.Millisecond
	body := bytes.Repeat([]byte("0123456789abcdef"), 10_000)
	tp.s3.put("v.mp4", body)
	tp.s3.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if n == 1 {
			tp.s3.mu.Lock()
			obj := tp.s3.objects["v.mp4"]
			tp.s3.mu.Unlock()
			stallAfter(w, r, obj, 50_000)
			return true
		}
		return false
	}
	resp, got := get(t, "GET", tp.url+"/v.mp4", nil)
	if resp.StatusCode != 200 || !bytes.Equal(got, body) {
		t.Fatalf("GET = %d, %d bytes; want the whole object", resp.StatusCode, len(got))
	}
	if !tp.logs.waitFor("resumes=1") || !tp.logs.waitFor("upstream body stalled") {
		t.Errorf("log does not show the stall and the resume:\n%s", tp.logs)
	}
}

// rangeCase is a client request shape and the bytes it must receive.
type rangeCase struct {
	name, rangeHeader string
	want              []byte
}

// clientRanges are the request shapes a resume or a pause must not break:
// the whole object, the closed range 1000-closedLast and the open range
// from 5000.
func clientRanges(body []byte, closedLast int) []rangeCase {
	return []rangeCase{
		{"whole object", "", body},
		{"closed range", fmt.Sprintf("bytes=1000-%d", closedLast), body[1000 : closedLast+1]},
		{"open range", "bytes=5000-", body[5000:]},
	}
}

// ctxBody is an upstream body that fails once its request is cancelled, as
// a real connection does when the attempt's context ends.
type ctxBody struct {
	ctx context.Context
	r   io.Reader
}

func (b *ctxBody) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	return b.r.Read(p)
}

func (b *ctxBody) Close() error { return nil }

// pausingWriter is a client that stops reading for pause once it has
// received after bytes.
type pausingWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
	after  int
	pause  time.Duration
	paused bool
}

// TestProxySlowReaderIsNotAStall: a client that pauses for 2.5× -timeout
// mid-body gets every byte from a healthy S3, with no resume: only time
// spent waiting on S3 counts against -timeout.
func TestProxySlowReaderIsNotAStall(t *testing.T) {
	body := make([]byte, 1<<20)
	for i := range body {
		body[i] = byte(i * 7)
	}
	for _, tt := range clientRanges(body, 800999) {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const timeout = time.Second
				var upstreamRequests atomic.Int64
				logs := &syncBuffer{}
				p := benchProxy(nil)
				p.log = slog.New(slog.NewTextHandler(logs, nil))
				p.upstream.log = p.log
				p.accessLog = true
				p.upstream.policy.limit = 3
				p.upstream.timeout = timeout
				p.upstream.transport = roundTripperFunc(func(r *http.Request) (*http.Response, error) {
					upstreamRequests.Add(1)
					rec := httptest.NewRecorder()
					rec.Header().Set("Etag", `"v1"`)
					http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(body))
					resp := rec.Result()
					resp.Body = &ctxBody{ctx: r.Context(), r: resp.Body}
					return resp, nil
				})
				req := httptest.NewRequest("GET", "/v.mp4", nil)
				if tt.rangeHeader != "" {
					req.Header.Set("Range", tt.rangeHeader)
				}
				w := &pausingWriter{h: http.Header{}, after: 200_000, pause: timeout * 5 / 2}
				start := time.Now()
				p.ServeHTTP(w, req)
				if !w.paused || time.Since(start) < w.pause {
					t.Fatalf("the client never paused")
				}
				if !bytes.Equal(w.body.Bytes(), tt.want) {
					t.Fatalf("client got %d bytes (status %d), want %d", w.body.Len(), w.status, len(tt.want))
				}
				if n := upstreamRequests.Load(); n != 1 {
					t.Errorf("upstream requests = %d, want 1: a paused client is not a stalled S3", n)
				}
				for _, word := range []string{"resuming", "stalled", "abort", "resumes=1"} {
					if strings.Contains(logs.String(), word) {
						t.Errorf("log says %q:\n%s", word, logs)
					}
				}
			})
		})
	}
}

func (w *pausingWriter) Header() http.Header  { return w.h }
func (w *pausingWriter) WriteHeader(code int) { w.status = code }
func (w *pausingWriter) Write(p []byte) (int, error) {
	if !w.paused && w.body.Len()+len(p) > w.after {
		w.paused = true
		time.Sleep(w.pause)
	}
	return w.body.Write(p)
}
