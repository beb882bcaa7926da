package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// rawServer is an HTTP/1.1 peer that answers with raw bytes: answer gets
// the index of the connection (from 1), the request and the connection,
// and returns false to close the connection. It counts the connections
// it accepted.
type rawServer struct {
	ln     net.Listener
	scheme string
	conns  atomic.Int32
	answer func(conn int, req *http.Request, c net.Conn) bool
	wg     sync.WaitGroup
}

func newRawServer(t *testing.T, answer func(conn int, req *http.Request, c net.Conn) bool) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveRaw(t, heldListener{ln}, "http", answer)
}

// newRawTLSServer is newRawServer over TLS, with the client's
// configuration that trusts it.
func newRawTLSServer(t *testing.T, answer func(conn int, req *http.Request, c net.Conn) bool) (*rawServer, *tls.Config) {
	t.Helper()
	hs := httptest.NewUnstartedServer(nil)
	hs.StartTLS() // for its certificate
	t.Cleanup(hs.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := hs.TLS.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	return serveRaw(t, tls.NewListener(heldListener{ln}, cfg), "https", answer), hs.Client().Transport.(*http.Transport).TLSClientConfig
}

// serveRaw answers on ln's connections.
func serveRaw(t *testing.T, ln net.Listener, scheme string, answer func(conn int, req *http.Request, c net.Conn) bool) *rawServer {
	s := &rawServer{ln: ln, scheme: scheme, answer: answer}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(s.conns.Add(1))
			s.wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil || !s.answer(n, req, c) {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

// url is where the server answers.
func (s *rawServer) url() string { return s.scheme + "://" + s.ln.Addr().String() }

// leanGet sends one GET (or method) through t and returns the response and its body, read to
// its end, and the body's error.
func leanGet(t *testing.T, lt *leanTransport, method, target string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := lt.RoundTrip(req)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body, err
}

// idleConns is how many of lt's connections to key's host are idle.
func (lt *leanTransport) idleConns(key leanKey) int {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return len(lt.idle[key])
}

// testLean is the lean client as the S3 client makes it, with timeout.
func testLean(timeout time.Duration) *leanTransport {
	return newUpstreamTransport(timeout)
}

// TestLeanFraming: each way a response says where its body ends, strictly
// checked, and whether the connection is used again after it (a second
// request shows it: one connection, or two).
func TestLeanFraming(t *testing.T) {
	tests := []struct {
		name, method string
		// answer is what the server writes; close ends the connection
		// after it.
		answer string
		close  bool
		// want is the body; wantErr the error of the round trip or of
		// reading the body (a substring); wantLength resp.ContentLength.
		want, wantErr string
		wantLength    int64
		reused        bool
	}{
		{name: "content-length", answer: "HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Range: bytes 0-4/10\r\n\r\nhello",
			want: "hello", wantLength: 5, reused: true},
		{name: "content-length twice, agreeing", answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
			want: "hi", wantLength: 2, reused: true},
		{name: "empty body", answer: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", wantLength: 0, reused: true},
		{name: "chunked, extensions and trailers", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n",
			want: "hello, world", wantLength: -1, reused: true},
		{name: "chunked, upper-case hex", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
			want: "0123456789", wantLength: -1, reused: true},
		{name: "interim responses skipped", answer: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" +
			"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes", want: "yes", wantLength: 3, reused: true},
		{name: "Connection: close honoured", answer: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
			want: "hi", wantLength: 2},
		{name: "HTTP/1.0 without keep-alive", answer: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", want: "hi", wantLength: 2},
		{name: "HTTP/1.0 with keep-alive", answer: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
			want: "hi", wantLength: 2, reused: true},
		{name: "body until close", answer: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", close: true,
			want: "all of it", wantLength: -1},
		{name: "HEAD has no body", method: "HEAD", answer: "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
			wantLength: 1000, reused: true},
		{name: "204 has no body", answer: "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", wantLength: 0, reused: true},
		{name: "304 has no body", answer: "HTTP/1.1 304 Not Modified\r\nEtag: \"e\"\r\n\r\n", wantLength: 0, reused: true},
		{name: "longer than its length: not reused", answer: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
			want: "hello", wantLength: 5},
		{name: "shorter than its length: an error", answer: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", close: true,
			wantErr: "unexpected EOF"},
		{name: "chunked, ends inside a chunk", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nhello", close: true,
			wantErr: "unexpected EOF"},
		{name: "chunked, ends before the last chunk", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", close: true,
			wantErr: "unexpected EOF"},
		{name: "chunked, data longer than its size", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
			wantErr: "chunk data longer"},
		{name: "chunked, bad size", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
			wantErr: "chunk size"},
		{name: "chunked, size without CRLF", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
			wantErr: "chunked framing line"},
		{name: "chunked, bad trailer", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon\r\n\r\n",
			wantErr: "trailer field"},
		{name: "both Transfer-Encoding and Content-Length", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
			wantErr: "both Transfer-Encoding and Content-Length"},
		{name: "unsupported Transfer-Encoding", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
			wantErr: "unsupported Transfer-Encoding"},
		{name: "content-lengths that disagree", answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
			wantErr: "Content-Length"},
		{name: "signed content-length", answer: "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi", wantErr: "Content-Length"},
		{name: "101 to a request for none", answer: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", wantErr: "101"},
		{name: "too many interim responses", answer: strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 6) + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
			wantErr: "interim responses"},
		{name: "obsolete line folding", answer: "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", wantErr: "header line"},
		{name: "space before the colon", answer: "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", wantErr: "header line"},
		{name: "bare LF", answer: "HTTP/1.1 200 OK\nContent-Length: 0\n\n", wantErr: "bare LF"},
		{name: "not HTTP/1.x", answer: "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", wantErr: "status line"},
		{name: "a head larger than the buffer", answer: "HTTP/1.1 200 OK\r\nX-Amz-Meta-Big: " + strings.Repeat("m", 20<<10) +
			"\r\nContent-Length: 2\r\n\r\nhi", want: "hi", wantLength: 2, reused: true},
		{name: "a head over 64 KiB", answer: "HTTP/1.1 200 OK\r\nX-Amz-Meta-Big: " + strings.Repeat("m", 70<<10) +
			"\r\nContent-Length: 2\r\n\r\nhi", wantErr: "head over 64 KiB"},
		{name: "a control character in a value", answer: "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", wantErr: "header field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newRawServer(t, func(conn int, req *http.Request, c net.Conn) bool {
				if req.URL.Path == "/second" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					return true
				}
				io.WriteString(c, tt.answer)
				return !tt.close
			})
			lt := testLean(5 * time.Second)
			defer lt.CloseIdleConnections()
			resp, body, err := leanGet(t, lt, cmp.Or(tt.method, "GET"), s.url()+"/first")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got body %q, error %v; want an error with %q", body, err, tt.wantErr)
				}
				if errors.Is(err, io.EOF) {
					t.Errorf("error %v is io.EOF: a broken body would read as complete", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(body) != tt.want || resp.ContentLength != tt.wantLength {
				t.Errorf("body %q, ContentLength %d; want %q, %d", body, resp.ContentLength, tt.want, tt.wantLength)
			}
			if _, body, err := leanGet(t, lt, "GET", s.url()+"/second"); err != nil || string(body) != "ok" {
				t.Fatalf("second request: %q, %v", body, err)
			}
			if conns := s.conns.Load(); (conns == 1) != tt.reused {
				t.Errorf("two requests took %d connections; reused %v, want %v", conns, conns == 1, tt.reused)
			}
		})
	}
}

// TestLeanRetriesAReusedConnectionTheServerClosed: S3 closes an idle
// connection as a request goes out on it; the request is sent again, once,
// on a new connection. On a new connection that closes, it is not.
func TestLeanRetriesAReusedConnectionTheServerClosed(t *testing.T) {
	s := newRawServer(t, func(conn int, req *http.Request, c net.Conn) bool {
		if conn == 1 && req.URL.Path == "/second" {
			return false // closes without answering
		}
		if conn == 3 {
			return false // a new connection closed before answering
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	lt := testLean(5 * time.Second)
	defer lt.CloseIdleConnections()
	for _, path := range []string{"/first", "/second"} {
		if _, body, err := leanGet(t, lt, "GET", s.url()+path); err != nil || string(body) != "ok" {
			t.Fatalf("%s: %q, %v", path, body, err)
		}
	}
	if n := s.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the closed one, and the retry's)", n)
	}
	lt.CloseIdleConnections()
	_, _, err := leanGet(t, lt, "GET", s.url()+"/third")
	if err == nil || !errors.Is(err, errClosedBeforeAnswer) {
		t.Errorf("a new connection closed before answering: %v, want errClosedBeforeAnswer", err)
	}
	if n := s.conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3: a new connection's failure is not retried", n)
	}
}

// TestLeanIdleConnectionThatSpoke: bytes that come after a response (a
// whole response nobody asked for, a 408 before a close, the rest of a
// response longer than it said) are no answer to the next request,
// whether they arrive while the connection is idle (the peek when it is
// taken finds them) or with the response, over TLS too (in crypto/tls's
// buffer): the connection is dropped and the request goes out on a new
// one. Read as an answer, they would serve one object's bytes for another
// and keep the connection a response behind.
func TestLeanIdleConnectionThatSpoke(t *testing.T) {
	for _, tt := range []struct {
		name, after string
		close       bool
		// together sends after in the response's write (over TLS, a record
		// of its own, which crypto/tls reads ahead into its buffer).
		together bool
	}{
		{name: "a response nobody asked for", after: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE"},
		{name: "a 408, then the end", after: "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", close: true},
		{name: "bytes after the body", after: "garbage after the body"},
		{name: "a response nobody asked for, with the response", after: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE", together: true},
	} {
		for _, scheme := range []string{"http", "https"} {
			t.Run(scheme+"/"+tt.name, func(t *testing.T) {
				read, spoke := make(chan struct{}), make(chan struct{})
				answer := func(conn int, req *http.Request, c net.Conn) bool {
					head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
					if conn != 1 || req.URL.Path != "/first" {
						io.WriteString(c, head)
						return true
					}
					if tt.together {
						corked(c, func() {
							io.WriteString(c, head) // over TLS, a record each
							io.WriteString(c, tt.after)
						})
					} else {
						io.WriteString(c, head)
						<-read
						io.WriteString(c, tt.after)
					}
					close(spoke)
					return !tt.close
				}
				lt := testLean(5 * time.Second)
				defer lt.CloseIdleConnections()
				var s *rawServer
				if scheme == "https" {
					s, lt.tlsConfig = newRawTLSServer(t, answer)
				} else {
					s = newRawServer(t, answer)
				}
				if _, body, err := leanGet(t, lt, "GET", s.url()+"/first"); err != nil || string(body) != "/first" {
					t.Fatalf("first: %q, %v", body, err)
				}
				close(read)
				<-spoke
				if !tt.together {
					waitReadable(t, lt, leanKey{https: scheme == "https", host: strings.TrimPrefix(s.url(), scheme+"://")})
				}
				for _, path := range []string{"/second", "/third"} {
					if _, body, err := leanGet(t, lt, "GET", s.url()+path); err != nil || string(body) != path {
						t.Fatalf("%s: %q, %v; want %q", path, body, err, path)
					}
				}
				if n := s.conns.Load(); n != 2 {
					t.Errorf("%d connections, want 2", n)
				}
			})
		}
	}
}

// corked runs writes on c (a served connection, or TLS over one) while
// its heldConn holds them, so what they wrote leaves in one write.
func corked(c net.Conn, writes func()) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	hc := c.(*heldConn)
	hc.holding = true
	writes()
	hc.holding = false
	hc.Conn.Write(hc.held)
	hc.held = nil
}

// heldConn is a served connection whose writes wait in held while
// holding is set (on the goroutine that serves it).
type heldConn struct {
	net.Conn
	holding bool
	held    []byte
}

func (c *heldConn) Write(p []byte) (int, error) {
	if c.holding {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// heldListener accepts heldConns.
type heldListener struct{ net.Listener }

func (l heldListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &heldConn{Conn: c}, nil
}

// waitReadable waits until key's idle connection has something to read
// (bytes, or its end), without reading it.
func waitReadable(t *testing.T, lt *leanTransport, key leanKey) {
	t.Helper()
	lt.mu.Lock()
	cs := lt.idle[key]
	lt.mu.Unlock()
	if len(cs) != 1 || cs[0].sys == nil {
		t.Fatalf("%d idle connections, want 1 with a descriptor", len(cs))
	}
	var b [1]byte
	err := cs[0].sys.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return !errors.Is(err, syscall.EAGAIN) // false: wait until readable
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLeanEndWithTheLastBytes: a connection whose end comes with a body's
// last bytes (crypto/tls reads a close_notify behind them) is not given
// back to the pool.
func TestLeanEndWithTheLastBytes(t *testing.T) {
	lt := testLean(5 * time.Second)
	lt.dial = func(context.Context, string, string) (net.Conn, error) {
		return &chunkConn{reads: []string{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "hello"}}, nil
	}
	_, body, err := leanGet(t, lt, "GET", "http://s3.test/key")
	if err != nil || string(body) != "hello" {
		t.Fatalf("%q, %v; want hello", body, err)
	}
	if n := lt.idleConns(leanKey{host: "s3.test"}); n != 0 {
		t.Errorf("%d idle connections, want 0: the connection had ended", n)
	}
}

// chunkConn returns its reads one per Read, the last with io.EOF.
type chunkConn struct {
	scriptConn
	reads []string
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.reads) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.reads[0])
	if c.reads = c.reads[1:]; len(c.reads) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// TestLeanBadRequestKeepsTheConnection: a request refused before it was
// written leaves its idle connection to the next request.
func TestLeanBadRequestKeepsTheConnection(t *testing.T) {
	s := newRawServer(t, func(conn int, req *http.Request, c net.Conn) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	lt := testLean(5 * time.Second)
	defer lt.CloseIdleConnections()
	if _, _, err := leanGet(t, lt, "GET", s.url()+"/first"); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", s.url()+"/bad", nil)
	req.Header.Set("X-Bad", "a\x00b")
	if _, err := lt.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "invalid header field value") {
		t.Fatalf("a NUL in a value: %v, want refused", err)
	}
	if _, body, err := leanGet(t, lt, "GET", s.url()+"/second"); err != nil || string(body) != "ok" {
		t.Fatalf("second: %q, %v", body, err)
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestLeanCloseAfterTheEnd: a Close from another goroutine, finding a
// Read holding the body, interrupts the connection only if the body has
// not ended: once it ended, the connection is the pool's (and maybe
// another request's); one it claimed first never goes back to the pool.
func TestLeanCloseAfterTheEnd(t *testing.T) {
	s := newRawServer(t, func(conn int, req *http.Request, c net.Conn) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	lt := testLean(5 * time.Second)
	defer lt.CloseIdleConnections()
	key := leanKey{host: strings.TrimPrefix(s.url(), "http://")}
	get := func() *leanBody {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", s.url()+"/", nil)
		resp, err := lt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Body.(*leanBody)
	}
	b := get()
	if body, err := io.ReadAll(b); err != nil || string(body) != "ok" {
		t.Fatalf("%q, %v", body, err)
	}
	b.mu.Lock() // as a Read that has just ended the body still holds it
	closed := make(chan struct{})
	go func() {
		b.Close()
		close(closed)
	}()
	waitBlocked(t, "(*leanBody).Close")
	b.mu.Unlock()
	<-closed
	if n := lt.idleConns(key); n != 1 {
		t.Fatalf("%d idle connections, want 1", n)
	}
	b = get() // on the same connection, unless the Close interrupted it
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1: the Close interrupted a pooled connection", n)
	}
	if !b.claim() {
		t.Fatal("an active body could not be claimed")
	}
	io.ReadAll(b)
	if n := lt.idleConns(key); n != 0 {
		t.Errorf("%d idle connections after a claimed body ended, want 0", n)
	}
}

// waitBlocked waits until a goroutine running fn waits for a lock.
func waitBlocked(t *testing.T, fn string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for {
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, fn) && strings.Contains(g, "sync.(*Mutex).Lock") {
				return
			}
		}
		if t.Context().Err() != nil {
			t.Fatalf("no goroutine in %s waits for a lock", fn)
		}
		runtime.Gosched()
	}
}

// TestLeanCloseBeforeTheEnd: a body closed before its end keeps the
// connection only when the rest of it is already in the buffer.
func TestLeanCloseBeforeTheEnd(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	s := newRawServer(t, func(conn int, req *http.Request, c net.Conn) bool {
		body := "small"
		if req.URL.Path == "/big" {
			body = big
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return true
	})
	lt := testLean(5 * time.Second)
	defer lt.CloseIdleConnections()
	key := leanKey{host: strings.TrimPrefix(s.url(), "http://")}
	for _, tt := range []struct {
		path string
		kept bool
	}{{"/small", true}, {"/big", false}} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", s.url()+tt.path, nil)
		resp, err := lt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if b := resp.Body.(*leanBody); tt.kept && int64(b.c.w-b.c.r) < b.left {
			t.Fatalf("%s: the body did not come with its head (one write)", tt.path)
		}
		resp.Body.Close()
		if n, err := resp.Body.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("%s: Read after Close = %d, %v; want an error", tt.path, n, err)
		}
		if kept := lt.idleConns(key) == 1; kept != tt.kept {
			t.Errorf("%s closed unread: connection kept %v, want %v", tt.path, kept, tt.kept)
		}
		lt.CloseIdleConnections()
	}
}

// TestLeanRequestHead: exactly what newRequest builds goes out: the
// target as signed (a key starting with '/' in the absolute form), Host
// first, the other fields sorted; nothing is added.
func TestLeanRequestHead(t *testing.T) {
	tests := []struct {
		name string
		url  *url.URL
		host string
		h    http.Header
		want string
	}{
		{"opaque target and query", upstreamURL("https", "b.s3.amazonaws.com", "/a%20b/c.mp4", "versionId=1"), "b.s3.amazonaws.com",
			http.Header{"Range": {"bytes=0-9"}, "User-Agent": {"s3-helper"}, "Authorization": {"AWS4-HMAC-SHA256 x"}},
			"GET /a%20b/c.mp4?versionId=1 HTTP/1.1\r\nHost: b.s3.amazonaws.com\r\nAuthorization: AWS4-HMAC-SHA256 x\r\nRange: bytes=0-9\r\nUser-Agent: s3-helper\r\n\r\n"},
		{"a key starting with a slash", upstreamURL("https", "b.s3.amazonaws.com", "//k", ""), "b.s3.amazonaws.com", http.Header{},
			"GET https://b.s3.amazonaws.com//k HTTP/1.1\r\nHost: b.s3.amazonaws.com\r\n\r\n"},
		{"a path and a bare query", &url.URL{Scheme: "https", Host: "z:443", Path: "/", RawQuery: "session"}, "",
			http.Header{"X-Amz-Create-Session-Mode": {"ReadOnly"}, "Host": {"ignored"}},
			"GET /?session HTTP/1.1\r\nHost: z:443\r\nX-Amz-Create-Session-Mode: ReadOnly\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &http.Request{Method: "GET", URL: tt.url, Host: tt.host, Header: tt.h}
			got, err := appendRequestHead(nil, req)
			if err != nil || string(got) != tt.want {
				t.Errorf("appendRequestHead = %q, %v\nwant %q", got, err, tt.want)
			}
		})
	}
	refused := []struct {
		name string
		req  *http.Request
	}{
		{"POST", &http.Request{Method: "POST", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"}, Header: http.Header{}}},
		{"a body", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"}, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("x")), ContentLength: 1}},
		{"a CRLF in a value", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"}, Header: http.Header{"Range": {"bytes=0-1\r\nX-Evil: 1"}}}},
		{"a NUL in a value", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"}, Header: http.Header{"Range": {"bytes=0-1\x00"}}}},
		{"a space in the target", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Opaque: "/a b"}, Header: http.Header{}}},
		{"a tab in the query", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Path: "/", RawQuery: "a=\tb"}, Header: http.Header{}}},
		{"a control character in the target", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Opaque: "/a\x01"}, Header: http.Header{}}},
		{"a control character in the host", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h"}, Host: "h\x00x", Header: http.Header{}}},
		{"a name that is no token", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"}, Header: http.Header{"Bad Name": {"v"}}}},
		{"no host", &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Path: "/"}, Header: http.Header{}}},
		{"ftp", &http.Request{Method: "GET", URL: &url.URL{Scheme: "ftp", Host: "h", Path: "/"}, Header: http.Header{}}},
	}
	for _, tt := range refused {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			req := tt.req.WithContext(t.Context())
			resp, err := testLean(time.Second).RoundTrip(req)
			if err == nil {
				resp.Body.Close()
			}
			if err == nil || !strings.HasPrefix(err.Error(), "lean client: ") {
				t.Errorf("a request with %s: %v, want the lean client's refusal before any dial", tt.name, err)
			}
		})
	}
}

// TestLeanContextEndsTheWait: when the request's context ends, a
// RoundTrip waiting for the head returns at once and a body Read blocked
// on S3 ends; the connection is closed (the server sees it).
func TestLeanContextEndsTheWait(t *testing.T) {
	closed := make(chan int, 2)
	s := newRawServer(t, func(conn int, req *http.Request, c net.Conn) bool {
		if req.URL.Path == "/body" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
		}
		c.Read(make([]byte, 1)) // until the client closes
		closed <- conn
		return false
	})
	lt := testLean(10 * time.Second)
	defer lt.CloseIdleConnections()

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.url()+"/head", nil)
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	if resp, err := lt.RoundTrip(req); err == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("RoundTrip = %v, %v; want context.Canceled", resp, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("RoundTrip returned %v after the cancel", d)
	}
	<-closed

	ctx, cancel = context.WithCancel(t.Context())
	req, _ = http.NewRequestWithContext(ctx, "GET", s.url()+"/body", nil)
	resp, err := lt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(50*time.Millisecond, cancel)
	body, err := io.ReadAll(resp.Body)
	if err == nil || string(body) != "part" {
		t.Errorf("body %q, %v; want \"part\" and an error", body, err)
	}
	resp.Body.Close()
	<-closed
}

// TestLeanFailuresClassify: the lean client's failures read as net/http's
// did to classifyTransport: a refused dial is a connect error; no head
// within the timeout, or a TLS handshake that never completes, a timeout.
func TestLeanFailuresClassify(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	refused := freeTCPAddr(t)
	tests := []struct {
		name, target string
		kind         string
	}{
		{"refused", "http://" + refused + "/k", kindConnect},
		{"no head in time", "http://" + silent.Addr().String() + "/k", kindTimeout},
		{"no TLS handshake in time", "https://" + silent.Addr().String() + "/k", kindTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lt := testLean(100 * time.Millisecond)
			_, _, err := leanGet(t, lt, "GET", tt.target)
			if err == nil {
				t.Fatal("no error")
			}
			if got := classifyTransport(err).kind; got != tt.kind {
				t.Errorf("classifyTransport(%v) = %s, want %s", err, got, tt.kind)
			}
		})
	}
}

// TestLeanIdlePool: connections idle for the idle timeout are closed; the
// pool keeps at most maxIdlePerHost per host; CloseIdleConnections
// empties it.
func TestLeanIdlePool(t *testing.T) {
	arrived, release := make(chan struct{}, 3), make(chan struct{})
	s := newRawServer(t, func(conn int, req *http.Request, c net.Conn) bool {
		if req.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	now := time.Unix(1e9, 0)
	lt := testLean(5 * time.Second)
	lt.maxIdlePerHost = 2
	lt.now = func() time.Time { return now }
	key := leanKey{host: strings.TrimPrefix(s.url(), "http://")}
	var wg sync.WaitGroup
	for range 3 { // three at once: three connections
		wg.Go(func() {
			if _, body, err := leanGet(t, lt, "GET", s.url()+"/slow"); err != nil || string(body) != "ok" {
				t.Errorf("%q, %v", body, err)
			}
		})
	}
	for range 3 {
		<-arrived
	}
	close(release)
	wg.Wait()
	if n := lt.idleConns(key); n != 2 {
		t.Errorf("%d idle connections, want maxIdlePerHost 2", n)
	}
	now = now.Add(upstreamIdleTimeout / 2)
	leanGet(t, lt, "GET", s.url()+"/fresh") // one is used again, and goes idle anew
	now = now.Add(upstreamIdleTimeout/2 + time.Second)
	lt.sweep()
	if n := lt.idleConns(key); n != 1 {
		t.Errorf("after the idle timeout: %d idle connections, want 1 (the one used since)", n)
	}
	lt.CloseIdleConnections()
	if n := lt.idleConns(key); n != 0 {
		t.Errorf("after CloseIdleConnections: %d idle", n)
	}
	// A response in flight then is closed when it ends; the next request
	// keeps its connection again.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", s.url()+"/inflight", nil)
	resp, err := lt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	lt.CloseIdleConnections()
	io.ReadAll(resp.Body)
	if n := lt.idleConns(key); n != 0 {
		t.Errorf("a response that ended after CloseIdleConnections: %d idle, want 0", n)
	}
	leanGet(t, lt, "GET", s.url()+"/next")
	if n := lt.idleConns(key); n != 1 {
		t.Errorf("the next request's connection: %d idle, want 1", n)
	}
	lt.CloseIdleConnections()
}

// TestLeanTLS: over TLS, the server's name verified, a body of many
// records arrives whole and the connection is used again.
func TestLeanTLS(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: 64 records
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake the last request refuses
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	lt := testLean(5 * time.Second)
	lt.tlsConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig
	defer lt.CloseIdleConnections()
	for range 3 {
		_, got, err := leanGet(t, lt, "GET", srv.URL+"/k")
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%d bytes, %v; want %d bytes", len(got), err, len(body))
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 3 requests, want 1", n)
	}
	lt.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12} // the system's roots: the test's certificate is not among them
	lt.CloseIdleConnections()
	if _, _, err := leanGet(t, lt, "GET", srv.URL+"/k"); err == nil {
		t.Error("a certificate no root signed was accepted")
	}
}

// FuzzLeanResponse reads arbitrary bytes as S3's answer to a GET and
// compares with net/http's reading: neither may panic or hang; where both
// accept the response and its body, they agree on the status, the length
// and every byte; a body the lean client ends cleanly is exactly as long
// as its Content-Length says.
func FuzzLeanResponse(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nEtag: \"e\"\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcdef",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		lt := &leanTransport{leanSettings: leanSettings{dial: func(context.Context, string, string) (net.Conn, error) {
			return &scriptConn{in: bytes.NewReader(raw)}, nil
		}}}
		req, _ := http.NewRequest("GET", "http://s3.example/k", nil)
		resp, err := lt.RoundTrip(req)
		var body []byte
		var berr error
		if err == nil {
			body, berr = io.ReadAll(resp.Body)
			resp.Body.Close()
			if berr == nil && resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
				t.Fatalf("a clean body of %d bytes, Content-Length %d", len(body), resp.ContentLength)
			}
		}
		std, serr := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), req)
		// net/http's Transport skips 1xx responses; ReadResponse does not.
		if err != nil || berr != nil || serr != nil || std.StatusCode < 200 {
			return
		}
		sbody, sberr := io.ReadAll(std.Body)
		if sberr != nil {
			return
		}
		if std.StatusCode != resp.StatusCode || !bytes.Equal(sbody, body) {
			t.Fatalf("lean: %d %q; net/http: %d %q", resp.StatusCode, body, std.StatusCode, sbody)
		}
	})
}

// TestLeanErrorsAreBounded: an error quoting S3's header values (which a
// log line carries) holds at most a short clip of them, however long they
// are.
func TestLeanErrorsAreBounded(t *testing.T) {
	long := strings.Repeat("x", 20<<10)
	for _, head := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: " + long + "\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + long + "\r\n\r\n",
		"HTTP/1.1 200 " + long + "\x01\r\n\r\n",
	} {
		lt := testLean(time.Second)
		lt.dial = func(context.Context, string, string) (net.Conn, error) {
			return &scriptConn{in: bytes.NewReader([]byte(head))}, nil
		}
		_, _, err := leanGet(t, lt, "GET", "http://s3.test/key")
		if err == nil || len(err.Error()) > 200 {
			t.Errorf("%d-byte error: %.80q…; want an error of at most 200 bytes", len(fmt.Sprint(err)), fmt.Sprint(err))
		}
	}
}

// scriptConn is a connection whose peer's bytes are in: writes vanish,
// reads end with io.EOF.
type scriptConn struct {
	net.Conn
	in *bytes.Reader
}

func (c *scriptConn) Read(p []byte) (int, error)         { return c.in.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *scriptConn) Close() error                       { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error    { return nil }
func (c *scriptConn) SetDeadline(time.Time) error        { return nil }
func (c *scriptConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *scriptConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *scriptConn) SetWriteDeadline(t time.Time) error { return nil }

// s3Responder answers every request on its connections with the same
// bytes, allocating nothing per request: the peer of BenchmarkProxyLean.
func s3Responder(b *testing.B, answer []byte) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 16<<10)
				for n := 0; ; {
					m, err := c.Read(buf[n:])
					if err != nil {
						return
					}
					n += m
					if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 {
						n = copy(buf, buf[i+4:n])
						if _, err := c.Write(answer); err != nil {
							return
						}
					}
				}
			})
		}
	})
	b.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// BenchmarkProxyLean is BenchmarkProxy over the lean client and a real
// loopback connection to a peer that answers from memory: its
// allocations are the request path's as in production (the time includes
// the system calls of both ends).
func BenchmarkProxyLean(b *testing.B) {
	for _, size := range []int{4 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			answer := fmt.Appendf(nil, "HTTP/1.1 206 Partial Content\r\nAccept-Ranges: bytes\r\nContent-Length: %d\r\n"+
				"Content-Range: bytes 0-%d/%d\r\nContent-Type: video/mp4\r\nDate: Fri, 02 Jan 2026 03:04:05 GMT\r\nEtag: \"abc\"\r\n"+
				"Last-Modified: Fri, 02 Jan 2026 03:04:05 GMT\r\nServer: AmazonS3\r\nX-Amz-Id-2: ID2\r\nX-Amz-Request-Id: REQ\r\n\r\n",
				size, size-1, 10*size)
			answer = append(answer, make([]byte, size)...)
			addr := s3Responder(b, answer)
			p := benchProxy(nil)
			p.routes = buildRoutes([]routeSpec{{"/", "media-bucket", ""}}, &url.URL{Scheme: "http", Host: addr}, false, false)
			p.upstream.scheme = "http"
			lt := newUpstreamTransport(5 * time.Second)
			defer lt.CloseIdleConnections()
			p.upstream.transport = lt
			benchServe(b, p, size)
		})
	}
}
