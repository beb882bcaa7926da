package main

// A lean HTTP/1.1 client for S3: the transport under each front end's
// pool and the shared one. net/http's Transport spends much of a small
// response's cost handing it between goroutines (a reader and a writer per
// connection) and buffering it twice; this client keeps a pool of
// connections per host with no goroutine of their own: the request's
// goroutine writes the request in one write, reads the response head
// into a buffer it borrows for that, and reads the body straight into the
// caller's buffer once the borrowed one is drained. Over TLS, a body read
// also takes the records that already arrived (TLS returns one per read),
// so the client gets fewer, larger writes.
//
// It serves what S3 requests are: GET and HEAD without a body, HTTP/1.1,
// Content-Length or chunked framing (both strictly checked), or a body
// that ends with the connection. It deliberately does not do what net/http
// does and S3 never needs: proxies from the environment (a signed request
// must never reach a stray HTTPS_PROXY), HTTP/2 (S3 speaks HTTP/1.1),
// compression (s3-helper turned it off: it would change the body's
// length), redirects (RoundTrip never follows them), request bodies and
// Expect: 100-continue (GET and HEAD have none), trailers (read and
// ignored: S3 sends none), pipelining, and response heads over 64 KiB
// (S3's are a few KiB).
//
// A connection goes back to its pool only after its response was read to
// its end, with nothing after it, no Connection: close, and its request's
// context not ended (which closes the connection at once: a hedge race and
// a client gone rely on that).

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// leanBufferBytes is the buffer a connection borrows for one round
	// trip: the request is written from it and the response head (with the
	// body bytes that came along) read into it; it goes back to the pool
	// once drained, and the body is read straight into the caller's
	// buffer. A head and a 4 KiB body fit in one read; every request in
	// flight holds one at first, so it is small: 64 KiB measured 17 MiB
	// more under 1000 slow clients, 32 KiB 20 MiB more in one run.
	leanBufferBytes = 8 << 10
	// maxResponseHeadBytes bounds a response's head: a head that does not
	// fit the buffer gets a larger one, up to this (S3's are a few KiB;
	// user metadata is at most 2 KB).
	maxResponseHeadBytes = 64 << 10
	// maxRequestHeadBytes bounds the request line and header fields sent.
	maxRequestHeadBytes = 32 << 10
	// maxInterimResponses bounds the 1xx responses skipped before the
	// final one (net/http bounds their heads' total size instead).
	maxInterimResponses = 5
	// maxChunkLineBytes bounds a chunk-size line (extensions included) and
	// a trailer field line.
	maxChunkLineBytes = 4 << 10
	// maxTrailerBytes bounds a chunked body's trailer section.
	maxTrailerBytes = 16 << 10
	// tcpKeepAlive is the dialer's keep-alive probe interval, as
	// net/http's dialer had it.
	tcpKeepAlive = 30 * time.Second
)

// Errors of a response that breaks HTTP/1.1's rules.
var (
	errMalformedResponse = errors.New("malformed HTTP response")
	errResponseTooLarge  = errors.New("HTTP response head over 64 KiB")
	errBodyClosed        = errors.New("read on a closed response body")
)

// deadlineError is a wait the lean client bounds running out: a net.Error
// whose Timeout is true, as net/http's are, so classifyTransport calls it a
// timeout.
type deadlineError struct{ what string }

func (e deadlineError) Error() string { return e.what }
func (deadlineError) Timeout() bool   { return true }
func (deadlineError) Temporary() bool { return true }

// leanTransport is the lean client: an http.RoundTripper (and a
// frontTransport) for GET and HEAD requests without a body. Its fields
// must be set before the first request and not changed after.
type leanTransport struct {
	// addr, when valid, is where every connection goes: one front end's
	// address (the request's host stays the Host header and TLS's server
	// name).
	addr netip.AddrPort
	// dialAddrs maps a host name (no port) to the host:port its
	// connections go to instead (directory buckets -endpoint pins).
	dialAddrs map[string]string
	// dial connects; nil means a net.Dialer with timeout and tcpKeepAlive.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// timeout bounds a dial, a TLS handshake and the wait for a response's
	// head once the request was written; zero means no bound.
	timeout time.Duration
	// tlsConfig is cloned for each TLS connection with the host's server
	// name; nil means TLS 1.2 or newer and the system's roots.
	tlsConfig *tls.Config
	// maxIdlePerHost and maxIdle bound the idle connections kept, per host
	// and in all; idleTimeout closes one idle that long.
	maxIdlePerHost, maxIdle int
	idleTimeout             time.Duration
	// now is the clock; nil means time.Now.
	now clock

	bufs sync.Pool // *[]byte of leanBufferBytes

	mu sync.Mutex // guards the fields below
	// idle holds each host's idle connections, the most recently used last.
	idle  map[leanKey][]*leanConn
	idleN int
	// sweeper closes connections idle for idleTimeout; sweeping is set
	// while it is armed.
	sweeper  *time.Timer
	sweeping bool
}

// leanKey names a pool: the scheme and the host a request names.
type leanKey struct {
	https bool
	host  string
}

// leanConn is one connection. Between a request's start and the end of
// its response it belongs to that request's goroutine; idle, to the pool.
type leanConn struct {
	t    *leanTransport
	key  leanKey
	raw  net.Conn // the TCP connection
	conn net.Conn // raw, or TLS over it
	// under is what TLS reads the TCP connection through; nil without TLS.
	under *underTLS
	// interrupt closes the connection; made once, for context.AfterFunc.
	interrupt func()
	// dead is set once the connection was closed or interrupted: it is
	// never used again.
	dead atomic.Bool
	// headTimer interrupts the connection when a response's head takes
	// longer than the transport's timeout, and sets headTimedOut; armed
	// only while a head is awaited (a timer per connection costs less than
	// setting and clearing a read deadline per request).
	headTimer    *time.Timer
	headTimedOut atomic.Bool

	// buf is borrowed while bytes of a response are buffered in it:
	// buf[r:w] was read and not yet consumed; nil otherwise.
	buf  *[]byte
	r, w int
	// stop ends the request's context.AfterFunc; nil when none is set.
	stop      func() bool
	reused    bool
	idleSince time.Time
}

// RoundTrip sends req and returns S3's response, whose body the caller
// must read to its end or close. When the request's context ends, the
// connection is closed at once: a RoundTrip waiting returns and a body
// Read blocked on it ends.
func (t *leanTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := checkLeanRequest(req); err != nil {
		return nil, err
	}
	ctx := req.Context()
	key := leanKey{https: req.URL.Scheme == "https", host: req.URL.Host}
	c, err := t.conn(ctx, key, false)
	if err != nil {
		return nil, t.failure(ctx, err)
	}
	resp, err := c.roundTrip(ctx, req)
	if err != nil && c.reused && errors.Is(err, errClosedBeforeAnswer) && ctx.Err() == nil {
		// S3 closed the idle connection, or closed it as the request
		// went out: as net/http does for a request that can be replayed,
		// try once more, on a new connection. The other idle ones stay:
		// one closed alone (a reset) says nothing of them, and a stale
		// one costs little to find (its end has usually arrived).
		if c, err = t.conn(ctx, key, true); err != nil {
			return nil, t.failure(ctx, err)
		}
		resp, err = c.roundTrip(ctx, req)
	}
	if err != nil {
		return nil, t.failure(ctx, err)
	}
	return resp, nil
}

// failure is what a failed round trip returns: the context's cause once
// it ended (as net/http does), else err.
func (t *leanTransport) failure(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// checkLeanRequest refuses what the lean client does not send.
func checkLeanRequest(req *http.Request) error {
	switch {
	case req.URL == nil:
		return errors.New("lean client: request without a URL")
	case req.URL.Scheme != "http" && req.URL.Scheme != "https":
		return fmt.Errorf("lean client: unsupported scheme %q", req.URL.Scheme)
	case req.URL.Host == "":
		return errors.New("lean client: request without a host")
	case req.Method != http.MethodGet && req.Method != http.MethodHead:
		return fmt.Errorf("lean client: unsupported method %q", req.Method)
	case req.Body != nil && req.Body != http.NoBody || req.ContentLength != 0:
		return errors.New("lean client: request with a body")
	}
	return nil
}

// CloseIdleConnections closes every idle connection; connections in use
// close when their response ends.
func (t *leanTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle, t.idleN = nil, 0
	if t.sweeper != nil {
		t.sweeper.Stop()
		t.sweeping = false
	}
	t.mu.Unlock()
	for _, cs := range idle {
		for _, c := range cs {
			c.close()
		}
	}
}

// conn takes an idle connection to key's host, or dials one (always,
// when fresh).
func (t *leanTransport) conn(ctx context.Context, key leanKey, fresh bool) (*leanConn, error) {
	if !fresh {
		if c := t.takeIdle(key); c != nil {
			return c, nil
		}
	}
	return t.dialConn(ctx, key)
}

// takeIdle takes the most recently used idle connection to key's host
// that is still alive; nil when there is none. One idle for idleTimeout
// is the sweeper's to close.
func (t *leanTransport) takeIdle(key leanKey) *leanConn {
	var expired []*leanConn
	defer func() {
		for _, c := range expired { // a TLS close writes: not under the lock
			c.close()
		}
	}()
	t.mu.Lock()
	defer t.mu.Unlock()
	cs := t.idle[key]
	for len(cs) > 0 {
		c := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		cs = cs[:len(cs)-1]
		t.idleN--
		t.idle[key] = cs
		if c.dead.Load() {
			expired = append(expired, c)
			continue
		}
		c.reused = true
		return c
	}
	return nil
}

// putIdle keeps c for the next request to its host, or closes it when the
// pool is full.
func (t *leanTransport) putIdle(c *leanConn) {
	c.idleSince = t.now.read()
	t.mu.Lock()
	cs := t.idle[c.key]
	if c.dead.Load() || t.maxIdlePerHost > 0 && len(cs) >= t.maxIdlePerHost || t.maxIdle > 0 && t.idleN >= t.maxIdle {
		t.mu.Unlock()
		c.close()
		return
	}
	if t.idle == nil {
		t.idle = map[leanKey][]*leanConn{}
	}
	t.idle[c.key] = append(cs, c)
	t.idleN++
	if t.idleTimeout > 0 && !t.sweeping {
		t.sweeping = true
		if t.sweeper == nil {
			t.sweeper = time.AfterFunc(t.idleTimeout, t.sweep)
		} else {
			t.sweeper.Reset(t.idleTimeout)
		}
	}
	t.mu.Unlock()
}

// sweep closes the connections idle for idleTimeout and arms itself for
// the next to reach it.
func (t *leanTransport) sweep() {
	now := t.now.read()
	var expired []*leanConn
	t.mu.Lock()
	var next time.Duration
	for key, cs := range t.idle {
		keep := cs[:0]
		for _, c := range cs {
			if left := t.idleTimeout - now.Sub(c.idleSince); left > 0 && !c.dead.Load() {
				keep = append(keep, c)
				if next == 0 || left < next {
					next = left
				}
			} else {
				expired = append(expired, c)
			}
		}
		clear(cs[len(keep):])
		t.idleN -= len(cs) - len(keep)
		if len(keep) == 0 {
			delete(t.idle, key)
		} else {
			t.idle[key] = keep
		}
	}
	t.sweeping = next > 0 && t.sweeper != nil
	if t.sweeping {
		t.sweeper.Reset(next)
	}
	t.mu.Unlock()
	for _, c := range expired {
		c.close()
	}
}

// dialAddress is where a connection to key's host goes.
func (t *leanTransport) dialAddress(key leanKey) (addr, serverName string) {
	host, port, err := net.SplitHostPort(key.host)
	if err != nil {
		host, port = key.host, "80"
		if key.https {
			port = "443"
		}
	}
	host = strings.Trim(host, "[]")
	switch {
	case t.addr.IsValid():
		return t.addr.String(), host
	case t.dialAddrs[host] != "":
		return t.dialAddrs[host], host
	}
	return net.JoinHostPort(host, port), host
}

// dialConn opens a connection to key's host, with TLS's handshake for
// https, within timeout. A dial's error is net's (a *net.OpError with Op
// "dial", a timeout among them); a handshake that runs out of time is a
// deadlineError.
func (t *leanTransport) dialConn(ctx context.Context, key leanKey) (*leanConn, error) {
	addr, serverName := t.dialAddress(key)
	dial := t.dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: t.timeout, KeepAlive: tcpKeepAlive}).DialContext
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &leanConn{t: t, key: key, raw: raw, conn: raw}
	c.interrupt = func() {
		c.dead.Store(true)
		c.raw.Close()
	}
	if t.timeout > 0 {
		c.headTimer = time.AfterFunc(t.timeout, func() {
			c.headTimedOut.Store(true)
			c.interrupt()
		})
		c.headTimer.Stop() // armed only while a head is awaited
	}
	if !key.https {
		return c, nil
	}
	cfg := t.tlsConfig
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = serverName
	}
	c.under = &underTLS{Conn: raw}
	tc := tls.Client(c.under, cfg)
	if t.timeout > 0 {
		raw.SetDeadline(t.now.read().Add(t.timeout))
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		c.close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, deadlineError{"TLS handshake timeout"}
		}
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	if t.timeout > 0 {
		raw.SetDeadline(time.Time{})
	}
	c.conn = tc
	return c, nil
}

// getBuffer borrows a round trip's buffer.
func (t *leanTransport) getBuffer() *[]byte {
	if b, ok := t.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, leanBufferBytes)
	return &b
}

// close closes the connection for good.
func (c *leanConn) close() {
	c.dead.Store(true)
	c.releaseBuffer()
	if c.headTimer != nil {
		c.headTimer.Stop()
	}
	c.conn.Close()
}

// releaseBuffer gives the borrowed buffer back (one grown for a large
// head is left to the collector).
func (c *leanConn) releaseBuffer() {
	if c.buf != nil {
		if len(*c.buf) == leanBufferBytes {
			c.t.bufs.Put(c.buf)
		}
		c.buf, c.r, c.w = nil, 0, 0
	}
}

// errClosedBeforeAnswer marks a connection that ended (closed or reset
// by the server, or a first byte that is no response) before any response
// came: on a reused connection, the request is sent again on a new one.
var errClosedBeforeAnswer = errors.New("the server closed the connection before answering")

// roundTrip writes req and reads the response's head.
func (c *leanConn) roundTrip(ctx context.Context, req *http.Request) (*http.Response, error) {
	c.buf = c.t.getBuffer()
	head, err := appendRequestHead((*c.buf)[:0], req)
	if err != nil {
		c.close()
		return nil, err
	}
	c.stop = context.AfterFunc(ctx, c.interrupt)
	if c.headTimer != nil {
		c.headTimer.Reset(c.t.timeout)
	}
	if _, err := c.conn.Write(head); err != nil {
		c.abandon()
		if c.reused {
			return nil, fmt.Errorf("%w: write request: %w", errClosedBeforeAnswer, err)
		}
		return nil, fmt.Errorf("write request: %w", err)
	}
	resp, err := c.readResponse(req)
	if err != nil {
		c.abandon()
		return nil, err
	}
	return resp, nil
}

// headArrived disarms the head's timer; false when it fired (the
// connection is closed).
func (c *leanConn) headArrived() bool {
	return c.headTimer == nil || c.headTimer.Stop() || !c.headTimedOut.Load()
}

// abandon ends a round trip that failed: the connection is closed.
func (c *leanConn) abandon() {
	if c.stop != nil {
		c.stop()
		c.stop = nil
	}
	c.close()
}

// finish ends a response read to its end (reusable) or not: the
// connection goes back to its pool when reusable, nothing follows the
// response in the buffer, and the request's context did not close it.
func (c *leanConn) finish(reusable bool) {
	stopped := c.stop == nil || c.stop()
	c.stop = nil
	if c.r != c.w {
		reusable = false // bytes after the response: it was longer than it said
	}
	if !reusable || !stopped || c.dead.Load() {
		c.close()
		return
	}
	c.releaseBuffer()
	c.t.putIdle(c)
}

// fill reads more of the response into the buffer; the bytes not yet
// consumed move to its start when it is full, and a buffer full of them
// is replaced by one twice as large, up to maxResponseHeadBytes.
func (c *leanConn) fill() error {
	b := *c.buf
	if c.w == len(b) {
		switch {
		case c.r > 0:
			c.w = copy(b, b[c.r:c.w])
			c.r = 0
		case len(b) >= maxResponseHeadBytes:
			return errResponseTooLarge
		default:
			larger := make([]byte, 2*len(b))
			copy(larger, b)
			c.t.bufs.Put(c.buf)
			c.buf, b = &larger, larger
		}
	}
	n, err := c.conn.Read(b[c.w:])
	c.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// readError names a failed read of the response's head: a timeout of
// ours, a server that closed before answering, or the read's own error.
func (c *leanConn) readError(err error, answered bool) error {
	switch {
	case c.headTimedOut.Load():
		return deadlineError{"timeout awaiting response headers"}
	case !answered && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)):
		return fmt.Errorf("%w: %w", errClosedBeforeAnswer, err)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: the connection ended inside the response head", errMalformedResponse)
	}
	return fmt.Errorf("read response: %w", err)
}

// readResponse reads the final response's head, skipping 1xx ones, and
// sets up its body.
func (c *leanConn) readResponse(req *http.Request) (*http.Response, error) {
	scanned := 0
	for interim := 0; ; {
		end := bytes.Index((*c.buf)[c.r+scanned:c.w], []byte(crlfcrlf))
		if end < 0 {
			scanned = max(c.w-c.r-3, 0) // relative to c.r, which fill may move
			if err := c.fill(); err != nil {
				return nil, c.readError(err, c.w > 0)
			}
			continue
		}
		end += c.r + scanned + len(crlfcrlf)
		lr := &leanResponse{}
		h := &lr.head
		if err := h.parse((*c.buf)[c.r:end], lr.values[:]); err != nil {
			if c.reused && !bytes.HasPrefix((*c.buf)[c.r:end], []byte("HTTP/")) {
				// Bytes left over from an earlier response that was
				// longer than it said: no answer to this request.
				return nil, fmt.Errorf("%w: %w", errClosedBeforeAnswer, err)
			}
			return nil, err
		}
		c.r, scanned = end, 0
		if h.status >= 200 && !c.headArrived() {
			return nil, deadlineError{"timeout awaiting response headers"}
		}
		if h.status >= 100 && h.status < 200 {
			if h.status == http.StatusSwitchingProtocols {
				return nil, fmt.Errorf("%w: 101 Switching Protocols to a request that asked for none", errMalformedResponse)
			}
			if interim++; interim > maxInterimResponses {
				return nil, fmt.Errorf("%w: more than %d interim responses", errMalformedResponse, maxInterimResponses)
			}
			continue
		}
		return c.response(req, lr)
	}
}

// crlfcrlf ends a response's head.
const crlfcrlf = "\r\n\r\n"

// response makes the http.Response of a final head: its framing per RFC
// 9112 §6.3, and a body that gives the connection back when it ends.
func (c *leanConn) response(req *http.Request, lr *leanResponse) (*http.Response, error) {
	h, resp := &lr.head, &lr.resp
	*resp = http.Response{Status: h.statusText, StatusCode: h.status, Proto: h.proto, ProtoMajor: 1, ProtoMinor: h.minor,
		Header: h.header, Close: h.close || req.Close, Request: req, ContentLength: h.contentLength}
	noBody := req.Method == http.MethodHead || h.status == http.StatusNoContent || h.status == http.StatusNotModified
	switch {
	case noBody:
		if req.Method != http.MethodHead {
			resp.ContentLength = 0
		}
		resp.Body = http.NoBody
		c.finish(!resp.Close)
		return resp, nil
	case h.chunked:
		resp.TransferEncoding = []string{"chunked"}
		resp.ContentLength = -1
		lr.body = leanBody{c: c, chunked: true, reusable: !resp.Close}
	case h.contentLength == 0:
		resp.Body = http.NoBody
		c.finish(!resp.Close)
		return resp, nil
	case h.contentLength > 0:
		lr.body = leanBody{c: c, left: h.contentLength, reusable: !resp.Close}
	default: // no framing: the body ends with the connection
		resp.Close = true
		lr.body = leanBody{c: c, untilClose: true}
	}
	resp.Body = &lr.body
	return resp, nil
}

// underTLS is a TLS connection's TCP side as crypto/tls reads it: reads
// go straight to the socket, except while noWait is set, when a read
// returns errWouldWait at once. Writes, deadlines and Close go straight to
// the connection. (A buffer here, to read the socket in larger pieces,
// measured no faster: the copy out of it cost what the system calls
// saved.)
type underTLS struct {
	net.Conn
	// noWait makes a Read return errWouldWait instead of waiting on the
	// network: crypto/tls keeps a temporary error's partial record and
	// reads on next time.
	noWait bool
}

// errWouldWait is a read under TLS that would have waited on the network.
var errWouldWait error = wouldWaitError{}

// wouldWaitError is errWouldWait's type: a temporary net.Error, which
// crypto/tls does not keep as the connection's error (TestLeanTLS pins
// that the reads after one go on).
type wouldWaitError struct{}

func (wouldWaitError) Error() string   { return "read would wait" }
func (wouldWaitError) Timeout() bool   { return true }
func (wouldWaitError) Temporary() bool { return true }

// Read reads from the socket unless noWait is set.
func (u *underTLS) Read(p []byte) (int, error) {
	if u.noWait {
		return 0, errWouldWait
	}
	return u.Conn.Read(p)
}

// leanResponse is a response with its head's fields and its body,
// allocated together.
type leanResponse struct {
	resp   http.Response
	body   leanBody
	head   responseHead
	values [16]string // the header's values, when no more
}

// leanBody is a response's body on its connection. Read and Close are
// meant for one goroutine; a Close from another interrupts a Read blocked
// on the network and then waits for it.
type leanBody struct {
	mu sync.Mutex // held by Read and Close; guards the fields below
	c  *leanConn
	// left is what remains of a Content-Length body, or of the chunk
	// being read.
	left int64
	// chunked: left counts down the current chunk; chunkState is what
	// comes next.
	chunked    bool
	chunkState int
	untilClose bool
	// reusable is set when the connection may serve another request once
	// this body ended.
	reusable bool
	// done is set once the connection was given back or closed; err is
	// what every Read returns then.
	done bool
	err  error
}

// The states of a chunked body between chunks.
const (
	chunkSize    = iota // a chunk-size line comes next
	chunkData           // left bytes of a chunk's data, then its CRLF
	chunkTrailer        // the trailer section comes next
)

// Read reads the body; a body shorter than its framing says ends in an
// error, never in a clean io.EOF.
func (b *leanBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	switch {
	case b.chunked:
		n, err = b.readChunked(p)
	case b.untilClose:
		n, err = b.c.readBody(p)
		if err == io.EOF {
			b.end(false, io.EOF)
			return n, io.EOF
		}
	default:
		n, err = b.c.readBody(p[:min(int64(len(p)), b.left)])
		b.left -= int64(n)
		if b.left == 0 {
			b.end(b.reusable && err == nil, io.EOF)
			return n, io.EOF
		}
		if err == io.EOF {
			err = fmt.Errorf("response body %d bytes short of its Content-Length: %w", b.left, io.ErrUnexpectedEOF)
		}
	}
	if err != nil && !b.done {
		b.end(false, err)
	}
	return n, err
}

// end gives the connection back (or closes it) once, and records what
// every later Read returns.
func (b *leanBody) end(reusable bool, err error) {
	b.done, b.err = true, err
	b.c.finish(reusable)
}

// Close ends the body. A body not read to its end closes the connection,
// unless what remains of it is already in the buffer.
func (b *leanBody) Close() error {
	if !b.mu.TryLock() {
		// A Read is blocked on another goroutine: end it.
		b.c.interrupt()
		b.mu.Lock()
	}
	defer b.mu.Unlock()
	if b.done {
		if b.err == io.EOF {
			b.err = errBodyClosed
		}
		return nil
	}
	c := b.c
	if !b.chunked && !b.untilClose && c.buf != nil && int64(c.w-c.r) >= b.left {
		c.r += int(b.left) // the rest came with the head: skip it, keep the connection
		b.end(b.reusable, errBodyClosed)
		return nil
	}
	b.end(false, errBodyClosed)
	return nil
}

// readBody reads body bytes into p: from the buffer while it holds some
// (and gives it back once drained), then straight from the connection.
func (c *leanConn) readBody(p []byte) (int, error) {
	if c.buf != nil {
		if c.r < c.w {
			n := copy(p, (*c.buf)[c.r:c.w])
			c.r += n
			if c.r == c.w {
				c.releaseBuffer()
			}
			return n, nil
		}
		c.releaseBuffer()
	}
	n, err := c.conn.Read(p)
	if c.under != nil {
		// TLS returns a record per Read: take the records already here
		// too, so the client gets fewer, larger writes.
		for err == nil && n < len(p) {
			c.under.noWait = true
			m, merr := c.conn.Read(p[n:])
			c.under.noWait = false
			n += m
			if merr != errWouldWait {
				err = merr
			}
			if merr != nil {
				break
			}
		}
	}
	if n > 0 && err == io.EOF {
		err = nil // the next Read says so again
	}
	return n, err
}

// readChunked reads a chunked body (RFC 9112 §7.1): chunk-size lines
// (extensions ignored), each chunk's data and CRLF, and the trailer
// section, read and ignored.
func (b *leanBody) readChunked(p []byte) (int, error) {
	c := b.c
	for {
		switch b.chunkState {
		case chunkSize:
			line, err := c.line(maxChunkLineBytes)
			if err != nil {
				return 0, err
			}
			size, err := parseChunkSize(line)
			if err != nil {
				return 0, err
			}
			if size == 0 {
				b.chunkState = chunkTrailer
				continue
			}
			b.left, b.chunkState = size, chunkData
		case chunkData:
			if b.left > 0 {
				n, err := c.readChunkData(p[:min(int64(len(p)), b.left)])
				b.left -= int64(n)
				if err == io.EOF {
					err = fmt.Errorf("chunked response body ended inside a chunk: %w", io.ErrUnexpectedEOF)
				}
				return n, err
			}
			line, err := c.line(2)
			if err != nil {
				return 0, err
			}
			if len(line) != 0 {
				return 0, fmt.Errorf("%w: chunk data longer than its size", errMalformedResponse)
			}
			b.chunkState = chunkSize
		case chunkTrailer:
			for total := 0; ; {
				line, err := c.line(maxChunkLineBytes)
				if err != nil {
					return 0, err
				}
				if len(line) == 0 {
					break
				}
				if total += len(line) + 2; total > maxTrailerBytes {
					return 0, fmt.Errorf("%w: trailer section over %d bytes", errMalformedResponse, maxTrailerBytes)
				}
				if i := bytes.IndexByte(line, ':'); i <= 0 || !isToken(line[:i]) || !validFieldValue(line[i+1:]) {
					return 0, fmt.Errorf("%w: trailer field %q", errMalformedResponse, clip(string(line), 64))
				}
			}
			b.end(b.reusable, io.EOF)
			return 0, io.EOF
		}
	}
}

// readChunkData reads chunk data into p, from the buffer first; the
// buffer stays borrowed (chunk lines are read through it).
func (c *leanConn) readChunkData(p []byte) (int, error) {
	if c.r < c.w {
		n := copy(p, (*c.buf)[c.r:c.w])
		c.r += n
		return n, nil
	}
	n, err := c.conn.Read(p)
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

// line returns the next CRLF-terminated line, without its CRLF, of at
// most limit bytes; it is valid until the next read.
func (c *leanConn) line(limit int) ([]byte, error) {
	if c.buf == nil {
		c.buf = c.t.getBuffer()
	}
	scanned := 0
	for {
		b := (*c.buf)[c.r:c.w]
		if i := bytes.IndexByte(b[scanned:], '\n'); i >= 0 {
			i += scanned
			if i == 0 || b[i-1] != '\r' || i-1 > limit {
				return nil, fmt.Errorf("%w: chunked framing line %q", errMalformedResponse, clip(string(b[:i]), 64))
			}
			c.r += i + 1
			return b[:i-1], nil
		}
		if len(b) > limit+1 {
			return nil, fmt.Errorf("%w: chunked framing line over %d bytes", errMalformedResponse, limit)
		}
		scanned = len(b) // relative to c.r, which fill may move
		if err := c.fill(); err != nil {
			if err == io.EOF {
				err = fmt.Errorf("chunked response body ended inside its framing: %w", io.ErrUnexpectedEOF)
			}
			return nil, err
		}
	}
}

// parseChunkSize reads a chunk-size line: hex digits, then optional
// extensions after ';', which are ignored.
func parseChunkSize(line []byte) (int64, error) {
	digits := line
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		digits = bytes.TrimRight(line[:i], " \t")
		if !validFieldValue(line[i+1:]) {
			return 0, fmt.Errorf("%w: chunk extension %q", errMalformedResponse, clip(string(line), 64))
		}
	}
	if len(digits) == 0 || len(digits) > 15 {
		return 0, fmt.Errorf("%w: chunk size %q", errMalformedResponse, clip(string(line), 64))
	}
	var n int64
	for _, d := range digits {
		switch {
		case '0' <= d && d <= '9':
			d -= '0'
		case 'a' <= d && d <= 'f':
			d -= 'a' - 10
		case 'A' <= d && d <= 'F':
			d -= 'A' - 10
		default:
			return 0, fmt.Errorf("%w: chunk size %q", errMalformedResponse, clip(string(line), 64))
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}

// responseHead is a response's status line and header fields, parsed.
type responseHead struct {
	status     int
	statusText string // "206 Partial Content"
	proto      string // "HTTP/1.1"
	minor      int
	header     http.Header
	// contentLength is -1 when the head gives none.
	contentLength int64
	chunked       bool
	// close is set when the connection must close after the response.
	close bool
}

// parse reads a head: the status line and header fields, each ending in
// CRLF, and the empty line. Field names are put in canonical form in
// place. Transfer-Encoding moves out of the header into chunked; a
// Content-Length given twice must agree; both together are refused (RFC
// 9112 §6.3: they "ought to be handled as an error").
func (h *responseHead) parse(block []byte, slab []string) error {
	lines := bytes.Count(block, []byte("\r\n")) - 2 // header fields
	if lines < 0 {
		return fmt.Errorf("%w: no status line", errMalformedResponse)
	}
	s := string(block) // one allocation; every field is a part of it
	eol := strings.Index(s, "\r\n")
	status := s[:eol]
	if len(status) < 12 || !strings.HasPrefix(status, "HTTP/1.") || status[8] != ' ' || status[7] != '0' && status[7] != '1' ||
		len(status) > 12 && status[12] != ' ' {
		return fmt.Errorf("%w: status line %q", errMalformedResponse, clip(status, 64))
	}
	code := 0
	for i := 9; i < 12; i++ {
		if d := status[i]; d < '0' || d > '9' {
			return fmt.Errorf("%w: status line %q", errMalformedResponse, clip(status, 64))
		}
		code = code*10 + int(status[i]-'0')
	}
	if code < 100 {
		return fmt.Errorf("%w: status line %q", errMalformedResponse, clip(status, 64))
	}
	if !validFieldValue(status[9:]) {
		return fmt.Errorf("%w: status line %q", errMalformedResponse, clip(status, 64))
	}
	h.status, h.statusText, h.proto, h.minor = code, status[9:], status[:8], int(status[7]-'0')
	h.header = make(http.Header, lines)
	h.contentLength = -1
	values := slab // one backing array for every value
	if len(values) < lines {
		values = make([]string, lines)
	}
	var te, connection []string
	rest := s[eol+2 : len(s)-2]
	pos := eol + 2 // where rest starts in block
	for rest != "" {
		eol := strings.Index(rest, "\r\n")
		line := rest[:eol]
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return fmt.Errorf("%w: header line %q", errMalformedResponse, clip(line, 64))
		}
		value := strings.Trim(line[colon+1:], " \t")
		if !validFieldValue(value) {
			return fmt.Errorf("%w: header field %q", errMalformedResponse, clip(line[:colon], 64))
		}
		key := canonicalKey(block[pos:pos+colon], s[pos:pos+colon])
		switch key {
		case "Transfer-Encoding":
			te = append(te, value)
			rest, pos = rest[eol+2:], pos+eol+2
			continue
		case "Connection":
			connection = append(connection, value)
		}
		values[0] = value
		if vs := h.header[key]; vs != nil {
			h.header[key] = append(vs, value)
		} else {
			h.header[key] = values[:1:1]
		}
		values = values[1:]
		rest, pos = rest[eol+2:], pos+eol+2
	}
	if h.minor == 0 {
		h.close = !headerHasToken(connection, "keep-alive") || headerHasToken(connection, "close")
	} else {
		h.close = headerHasToken(connection, "close")
	}
	if cls := h.header["Content-Length"]; len(cls) > 0 {
		n, err := parseContentLength(cls[0])
		if err != nil {
			return err
		}
		for _, v := range cls[1:] {
			if v != cls[0] {
				return fmt.Errorf("%w: Content-Length %q", errMalformedResponse, cls)
			}
		}
		h.contentLength = n
	}
	if len(te) > 0 {
		if len(te) > 1 || !strings.EqualFold(te[0], "chunked") || h.minor == 0 {
			return fmt.Errorf("%w: unsupported Transfer-Encoding %q", errMalformedResponse, te)
		}
		if h.contentLength >= 0 {
			return fmt.Errorf("%w: both Transfer-Encoding and Content-Length", errMalformedResponse)
		}
		h.chunked = true
	}
	return nil
}

// parseContentLength reads a Content-Length: decimal digits only.
func parseContentLength(v string) (int64, error) {
	if v == "" || len(v) > 18 {
		return 0, fmt.Errorf("%w: Content-Length %q", errMalformedResponse, clip(v, 64))
	}
	var n int64
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, fmt.Errorf("%w: Content-Length %q", errMalformedResponse, clip(v, 64))
		}
		n = n*10 + int64(v[i]-'0')
	}
	return n, nil
}

// headerHasToken reports whether a comma-separated header's values hold
// token, in any case.
func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.Trim(f, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// commonResponseKeys are the header names S3 sends, interned so each
// response's header map shares them.
var commonResponseKeys = map[string]string{
	"Accept-Ranges": "Accept-Ranges", "Cache-Control": "Cache-Control", "Connection": "Connection",
	"Content-Disposition": "Content-Disposition", "Content-Encoding": "Content-Encoding",
	"Content-Language": "Content-Language", "Content-Length": "Content-Length", "Content-Range": "Content-Range",
	"Content-Type": "Content-Type", "Date": "Date", "Etag": "Etag", "Expires": "Expires", "Keep-Alive": "Keep-Alive",
	"Last-Modified": "Last-Modified", "Server": "Server", "Transfer-Encoding": "Transfer-Encoding",
	"X-Amz-Bucket-Region": "X-Amz-Bucket-Region", "X-Amz-Id-2": "X-Amz-Id-2", "X-Amz-Request-Id": "X-Amz-Request-Id",
	"X-Amz-Server-Side-Encryption": "X-Amz-Server-Side-Encryption", "X-Amz-Storage-Class": "X-Amz-Storage-Class",
	"X-Amz-Version-Id": "X-Amz-Version-Id",
}

// canonicalKey is the canonical form of the field name s, whose bytes in
// the buffer are b: a common name interned, s itself when it is canonical
// already; b is put in canonical form in place.
func canonicalKey(b []byte, s string) string {
	canonicalizeKey(b)
	if k, ok := commonResponseKeys[string(b)]; ok {
		return k
	}
	if string(b) == s {
		return s
	}
	return string(b)
}

// canonicalizeKey puts a header name in canonical form in place: a capital
// at the start and after each '-', lower case elsewhere.
func canonicalizeKey(b []byte) {
	upper := true
	for i, ch := range b {
		switch {
		case upper && 'a' <= ch && ch <= 'z':
			b[i] = ch - ('a' - 'A')
		case !upper && 'A' <= ch && ch <= 'Z':
			b[i] = ch + ('a' - 'A')
		}
		upper = ch == '-'
	}
}

// isToken reports whether b is an RFC 9110 token (a field name).
func isToken[T string | []byte](b T) bool {
	if len(b) == 0 {
		return false
	}
	for i := 0; i < len(b); i++ {
		switch ch := b[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", ch) >= 0:
		default:
			return false
		}
	}
	return true
}

// validFieldValue reports whether b holds no control character but
// horizontal tab (RFC 9110 §5.5).
func validFieldValue[T string | []byte](b T) bool {
	for i := 0; i < len(b); i++ {
		if ch := b[i]; ch < ' ' && ch != '\t' || ch == 0x7f {
			return false
		}
	}
	return true
}

// appendRequestHead appends req's request line and header fields to b:
// the target as req.URL gives it (an opaque one as is), Host first, the
// other fields sorted by name. A name that is no token or a value with a
// CR or LF is refused, as net/http does.
func appendRequestHead(b []byte, req *http.Request) ([]byte, error) {
	u := req.URL
	b = append(append(b, req.Method...), ' ')
	switch {
	case u.Opaque != "" && strings.HasPrefix(u.Opaque, "//"):
		b = append(append(append(b, u.Scheme...), ':'), u.Opaque...)
	case u.Opaque != "":
		b = append(b, u.Opaque...)
	default:
		path := u.EscapedPath()
		if path == "" {
			path = "/"
		}
		b = append(b, path...)
	}
	if u.ForceQuery || u.RawQuery != "" {
		b = append(append(b, '?'), u.RawQuery...)
	}
	host := req.Host
	if host == "" {
		host = u.Host
	}
	if strings.ContainsAny(host, " \r\n/") {
		return nil, fmt.Errorf("lean client: invalid host %q", host)
	}
	b = append(append(append(b, " HTTP/1.1\r\nHost: "...), host...), "\r\n"...)
	var keysArray [24]string
	keys := keysArray[:0]
	for k := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer", "Connection":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !isToken(k) {
			return nil, fmt.Errorf("lean client: invalid header field name %q", k)
		}
		for _, v := range req.Header[k] {
			if strings.IndexByte(v, '\n') >= 0 || strings.IndexByte(v, '\r') >= 0 {
				return nil, fmt.Errorf("lean client: invalid header field value for %q", k)
			}
			b = append(append(append(append(b, k...), ": "...), v...), "\r\n"...)
		}
	}
	if req.Close {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	if len(b) > maxRequestHeadBytes {
		return nil, fmt.Errorf("lean client: request head of %d bytes, limit %d", len(b), maxRequestHeadBytes)
	}
	return b, nil
}
