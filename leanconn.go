package main

// One connection of the lean client: a request written, its response's
// head read and its body framed (RFC 9112 §6.3), the connection given back
// to its pool only once the body ended cleanly.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxInterimResponses bounds the 1xx responses skipped before the
	// final one (net/http bounds their heads' total size instead).
	maxInterimResponses = 5
	// maxChunkLineBytes bounds a chunk-size line (extensions included) and
	// a trailer field line.
	maxChunkLineBytes = 4 << 10
	// maxTrailerBytes bounds a chunked body's trailer section.
	maxTrailerBytes = 16 << 10
)

var errBodyClosed = errors.New("read on a closed response body")

// deadlineError is a wait the lean client bounds running out: a net.Error
// whose Timeout is true, as net/http's are, so classifyTransport calls it a
// timeout.
type deadlineError struct{ what string }

func (e deadlineError) Error() string { return e.what }
func (deadlineError) Timeout() bool   { return true }
func (deadlineError) Temporary() bool { return true }

// leanKey names a pool: the scheme and the host a request names.
type leanKey struct {
	https bool
	host  string
}

// leanConn is one connection. Between a request's start and the end of
// its response it belongs to that request's goroutine; idle, to the pool.
type leanConn struct {
	leanReader
	key leanKey
	raw net.Conn // the TCP connection
	// backToPool keeps the connection for another request once a
	// response ended cleanly (the pool's: a connection knows no pool).
	backToPool func(*leanConn)
	// interrupt closes the connection; made once, for context.AfterFunc.
	interrupt func()
	// dead is set once the connection was closed or interrupted: it is
	// never used again.
	dead atomic.Bool
	// headTimer interrupts the connection when a response's head takes
	// longer than headTimeout, and sets headTimedOut; armed only while a
	// head is awaited (a timer per connection costs less than setting and
	// clearing a read deadline per request).
	headTimer    *time.Timer
	headTimeout  time.Duration
	headTimedOut atomic.Bool

	// sys peeks at the idle TCP connection (stale); nil when the dial gave
	// a connection without a descriptor (tests).
	sys syscall.RawConn
	// peekFn is stale's one peek, made once per connection; peekN and
	// peekErr are its result.
	peekFn   func(fd uintptr) bool
	peekByte [1]byte
	peekN    int
	peekErr  error

	// stop ends the request's context.AfterFunc; nil when none is set.
	stop      func() bool
	reused    bool
	idleSince time.Time
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

// watchIdle prepares stale's peek at the TCP connection.
func (c *leanConn) watchIdle() {
	sc, ok := c.raw.(syscall.Conn)
	if !ok {
		return
	}
	sys, err := sc.SyscallConn()
	if err != nil {
		return
	}
	c.sys = sys
	c.peekFn = func(fd uintptr) bool {
		c.peekN, _, c.peekErr = syscall.Recvfrom(int(fd), c.peekByte[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait: an idle connection has nothing to say
	}
}

// stale reports whether an idle connection can carry no request: the
// server closed or reset it, or sent bytes no request asked for (a 408
// before closing, the rest of a response longer than it said), which
// would be read as the next request's answer. net/http's Transport learns
// this from a goroutine reading each idle connection; one peek that never
// waits, when the connection is taken, costs less.
func (c *leanConn) stale() bool {
	if c.sys == nil {
		return false
	}
	if err := c.sys.Read(c.peekFn); err != nil {
		return true
	}
	return !errors.Is(c.peekErr, syscall.EAGAIN) // a byte, the end (0 bytes, no error), or an error
}

// errClosedBeforeAnswer marks a connection that ended (closed or reset
// by the server, or a first byte that is no response) before any response
// came: on a reused connection, the request is sent again on a new one.
var errClosedBeforeAnswer = errors.New("the server closed the connection before answering")

// roundTrip writes req's head and reads the response's into buf, a
// lent buffer the head may be in (appendRequestHead's), which the
// connection keeps while it holds bytes of the response.
func (c *leanConn) roundTrip(ctx context.Context, req *http.Request, buf *[]byte, head []byte) (*http.Response, error) {
	c.buf = buf
	c.stop = context.AfterFunc(ctx, c.interrupt)
	if c.headTimer != nil {
		c.headTimer.Reset(c.headTimeout)
	}
	if _, err := c.conn.Write(head); err != nil {
		c.abandon()
		switch {
		case c.headTimedOut.Load():
			return nil, deadlineError{"timeout writing the request"}
		case c.reused:
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

// headArrived disarms the head's timer; false when it fired: the timer
// is armed only while a head is awaited, so a Stop that finds it not
// pending means its function runs (or ran) and closes the connection.
func (c *leanConn) headArrived() bool {
	return c.headTimer == nil || c.headTimer.Stop()
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
// response in the buffer or in crypto/tls's, and the request's context
// did not close it.
func (c *leanConn) finish(reusable bool) {
	stopped := c.stop == nil || c.stop()
	c.stop = nil
	if !reusable || !stopped || c.dead.Load() || c.r != c.w || c.tlsLeftover() {
		// Bytes after the response are no answer to the next request.
		c.close()
		return
	}
	c.releaseBuffer()
	c.backToPool(c)
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
			if bytes.Contains((*c.buf)[c.r+scanned:c.w], []byte("\n\n")) {
				// A head's end with bare LF line ends: no CRLF pair will follow.
				return nil, fmt.Errorf("%w: a head with bare LF line ends", errMalformedResponse)
			}
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
	// hold is bodyActive until the body ends (bodyEnded) or a Close from
	// another goroutine claims the connection to interrupt a Read
	// (bodyInterrupted): whichever comes first decides, so a Close never
	// interrupts a connection already given back to the pool.
	hold atomic.Int32
}

// The values of leanBody.hold.
const (
	bodyActive = iota
	bodyEnded
	bodyInterrupted
)

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
	if !b.hold.CompareAndSwap(bodyActive, bodyEnded) {
		reusable = false // a Close interrupted the connection
	}
	b.c.finish(reusable)
}

// claim takes the connection from a body still active, for a Close to
// interrupt it; false once the body ended (and gave the connection back).
func (b *leanBody) claim() bool {
	return b.hold.CompareAndSwap(bodyActive, bodyInterrupted)
}

// Close ends the body. A body not read to its end closes the connection,
// unless what remains of it is already in the buffer.
func (b *leanBody) Close() error {
	if !b.mu.TryLock() {
		// A Read holds the body on another goroutine: end it, unless it
		// already ended the body (the connection may be another's now).
		if b.claim() {
			b.c.interrupt()
		}
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
