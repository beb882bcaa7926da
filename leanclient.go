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
// a client gone rely on that); it is taken again only if a peek finds
// nothing arrived while it was idle (stale).

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// tcpKeepAlive is the dialer's keep-alive probe interval, as net/http's
// dialer had it.
const tcpKeepAlive = 30 * time.Second

// leanTransport is the lean client: an http.RoundTripper (and a
// frontTransport) for GET and HEAD requests without a body: its settings
// and the pool they shape.
type leanTransport struct {
	leanSettings

	bufs bufferPool // of leanBufferBytes

	mu sync.Mutex // guards the fields below
	// idle holds each host's idle connections, the most recently used last.
	idle  map[leanKey][]*leanConn
	idleN int
	// closeIdle is set by CloseIdleConnections until the next request:
	// a connection whose response ends meanwhile is closed, not kept.
	closeIdle bool
	// sweeper closes connections idle for maxIdleTime; sweeping is set
	// while it is armed.
	sweeper  *time.Timer
	sweeping bool
}

// leanSettings are a lean client's settings, set before its first request
// and not changed after; a copy makes another client like it.
type leanSettings struct {
	// addr, when valid, is where every connection goes: one front end's
	// address (the request's host stays the Host header and TLS's server
	// name).
	addr netip.AddrPort
	// dialAddrs maps a host name (no port) to the host:port its
	// connections go to instead (directory buckets -endpoint pins).
	dialAddrs map[string]string
	// dial connects; nil means a net.Dialer with timeout and tcpKeepAlive.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// timeout bounds a dial, a TLS handshake, and the request's write with
	// the wait for its response's head; zero means no bound.
	timeout time.Duration
	// tlsConfig is cloned for each TLS connection with the host's server
	// name; nil means TLS 1.2 or newer and the system's roots.
	tlsConfig *tls.Config
	// maxIdlePerHost and maxIdle bound the idle connections kept, per host
	// and in all; maxIdleTime closes one idle that long.
	maxIdlePerHost, maxIdle int
	maxIdleTime             time.Duration
	// now is the clock; nil means time.Now.
	now clock
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
	buf, head, err := t.requestHead(req)
	if err != nil {
		return nil, err // refused before any connection was taken
	}
	c, err := t.conn(ctx, key, false)
	if err != nil {
		t.bufs.takeBack(buf, leanBufferBytes)
		return nil, t.failure(ctx, err)
	}
	reused := c.reused // c may be another request's once roundTrip returns
	resp, err := c.roundTrip(ctx, req, buf, head)
	if err != nil && reused && errors.Is(err, errClosedBeforeAnswer) && ctx.Err() == nil {
		// S3 closed the connection as the request went out: as net/http
		// does for a request that can be replayed, try once more, on a
		// new connection. The other idle ones stay: one closed alone (a
		// reset) says nothing of them, and the peek when one is taken
		// finds any other S3 closed.
		if buf, head, err = t.requestHead(req); err != nil {
			return nil, err
		}
		if c, err = t.conn(ctx, key, true); err != nil {
			t.bufs.takeBack(buf, leanBufferBytes)
			return nil, t.failure(ctx, err)
		}
		resp, err = c.roundTrip(ctx, req, buf, head)
	}
	if err != nil {
		return nil, t.failure(ctx, err)
	}
	return resp, nil
}

// requestHead writes req's head into a buffer lent for the round trip,
// which reads the response into it once the head is sent.
func (t *leanTransport) requestHead(req *http.Request) (*[]byte, []byte, error) {
	buf := t.bufs.lend(leanBufferBytes)
	head, err := appendRequestHead((*buf)[:0], req)
	if err != nil {
		t.bufs.takeBack(buf, leanBufferBytes)
		return nil, nil, err
	}
	return buf, head, nil
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

// CloseIdleConnections closes every idle connection, and, as net/http's
// Transport does, each in use when its response ends, until a request
// asks for one again (a retired front end's connections end with their
// responses).
func (t *leanTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle, t.idleN, t.closeIdle = nil, 0, true
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
// that can still carry a request; nil when there is none. One idle for
// maxIdleTime is the sweeper's to close.
func (t *leanTransport) takeIdle(key leanKey) *leanConn {
	for {
		c := t.popIdle(key)
		if c == nil {
			return nil
		}
		if !c.dead.Load() && !c.stale() {
			c.reused = true
			return c
		}
		c.close() // a TLS close writes: not under the lock
	}
}

// popIdle takes key's most recently used idle connection off the pool.
func (t *leanTransport) popIdle(key leanKey) *leanConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closeIdle = false // a request wants connections kept again
	cs := t.idle[key]
	if len(cs) == 0 {
		return nil
	}
	c := cs[len(cs)-1]
	cs[len(cs)-1] = nil
	t.idle[key] = cs[:len(cs)-1]
	t.idleN--
	return c
}

// putIdle keeps c for the next request to its host, or closes it when the
// pool is full.
func (t *leanTransport) putIdle(c *leanConn) {
	c.idleSince = t.now.read()
	t.mu.Lock()
	cs := t.idle[c.key]
	if c.dead.Load() || t.closeIdle || t.maxIdlePerHost > 0 && len(cs) >= t.maxIdlePerHost || t.maxIdle > 0 && t.idleN >= t.maxIdle {
		t.mu.Unlock()
		c.close()
		return
	}
	if t.idle == nil {
		t.idle = map[leanKey][]*leanConn{}
	}
	t.idle[c.key] = append(cs, c)
	t.idleN++
	if t.maxIdleTime > 0 && !t.sweeping {
		t.sweeping = true
		if t.sweeper == nil {
			t.sweeper = time.AfterFunc(t.maxIdleTime, t.sweep)
		} else {
			t.sweeper.Reset(t.maxIdleTime)
		}
	}
	t.mu.Unlock()
}

// sweep closes the connections idle for maxIdleTime and arms itself for
// the next to reach it.
func (t *leanTransport) sweep() {
	now := t.now.read()
	var expired []*leanConn
	t.mu.Lock()
	var next time.Duration
	for key, cs := range t.idle {
		keep := cs[:0]
		for _, c := range cs {
			if left := t.maxIdleTime - now.Sub(c.idleSince); left > 0 && !c.dead.Load() {
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
	c := &leanConn{leanReader: leanReader{conn: raw, bufs: &t.bufs}, key: key, raw: raw,
		backToPool: t.putIdle, headTimeout: t.timeout}
	c.watchIdle()
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
		raw.SetDeadline(time.Now().Add(t.timeout)) // the network's clock, never a test's
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
