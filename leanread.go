package main

// How the lean client reads a connection: through a buffer borrowed while
// bytes of a response sit in it, then straight into the caller's buffer.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
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
)

var errResponseTooLarge = errors.New("HTTP response head over 64 KiB")

// leanReader is a connection's reading side.
type leanReader struct {
	conn net.Conn // the TCP connection, or TLS over it
	// under is what TLS reads the TCP connection through; nil without TLS.
	under *underTLS
	bufs  *bufferPool // of leanBufferBytes
	// buf is borrowed while bytes of a response are buffered in it:
	// buf[r:w] was read and not yet consumed; nil otherwise.
	buf  *[]byte
	r, w int
	// probe is tlsLeftover's one-byte read.
	probe [1]byte
}

// tlsLeftover reports whether crypto/tls holds anything that came after
// the response: bytes it decrypted with the body's last or records it
// read ahead from the socket, where the peek at an idle connection
// (stale) cannot see them. One read that never waits on the network.
func (c *leanReader) tlsLeftover() bool {
	if c.under == nil {
		return false
	}
	c.under.noWait = true
	n, err := c.conn.Read(c.probe[:])
	c.under.noWait = false
	return n > 0 || err != errWouldWait
}

// releaseBuffer gives the borrowed buffer back.
func (c *leanReader) releaseBuffer() {
	if c.buf != nil {
		c.bufs.takeBack(c.buf, leanBufferBytes)
		c.buf, c.r, c.w = nil, 0, 0
	}
}

// fill reads more of the response into the buffer; the bytes not yet
// consumed move to its start when it is full, and a buffer full of them
// is replaced by one twice as large, up to maxResponseHeadBytes.
func (c *leanReader) fill() error {
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
			c.bufs.takeBack(c.buf, leanBufferBytes)
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

// readBody reads body bytes into p: from the buffer while it holds some
// (and gives it back once drained), then straight from the connection.
func (c *leanReader) readBody(p []byte) (int, error) {
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
	// The connection's end may come with the last bytes (crypto/tls reads
	// a close_notify just behind them): it stays with them, so a body
	// that ends there never gives back a connection that ended.
	return n, err
}

// readChunkData reads chunk data into p, from the buffer first; the
// buffer stays borrowed (chunk lines are read through it).
func (c *leanReader) readChunkData(p []byte) (int, error) {
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
func (c *leanReader) line(limit int) ([]byte, error) {
	if c.buf == nil {
		c.buf = c.bufs.lend(leanBufferBytes)
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
