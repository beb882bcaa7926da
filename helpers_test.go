package main

// Helpers the tests share: a log sink that wakes waiters on every write (no
// test polls with sleeps), and parsing what arrives on the wire,
// independently of the code under test.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log sink safe for concurrent writers; waiters are woken
// by each write.
type syncBuffer struct {
	mu sync.Mutex // guards b and grew
	b  bytes.Buffer
	// grew is closed (and replaced) when text is written.
	grew chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grew != nil {
		close(s.grew)
		s.grew = nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitUntil waits until ok(text) holds, woken by each write, for at most
// limit; it returns the text and whether ok held. The limit only bounds a
// failing test: a passing one returns on the write it waits for.
func (s *syncBuffer) waitUntil(limit time.Duration, ok func(text string) bool) (string, bool) {
	timeout := time.After(limit)
	for {
		s.mu.Lock()
		text := s.b.String()
		if s.grew == nil {
			s.grew = make(chan struct{})
		}
		grew := s.grew
		s.mu.Unlock()
		if ok(text) {
			return text, true
		}
		select {
		case <-grew:
		case <-timeout:
			return text, false
		}
	}
}

// waitFor waits for sub to appear: a request's log line may be written
// after the client has read the whole response.
func (s *syncBuffer) waitFor(sub string) bool {
	_, ok := s.waitUntil(5*time.Second, func(text string) bool { return strings.Contains(text, sub) })
	return ok
}

// parseCanonicalQuery splits a raw query on '&' and '=' and percent-decodes
// each part without treating '+' as space.
func parseCanonicalQuery(raw string) (url.Values, error) {
	params := url.Values{}
	if raw == "" {
		return params, nil
	}
	for part := range strings.SplitSeq(raw, "&") {
		name, value, _ := strings.Cut(part, "=")
		n, err := percentDecode(name)
		if err != nil {
			return nil, err
		}
		v, err := percentDecode(value)
		if err != nil {
			return nil, err
		}
		params.Add(n, v)
	}
	return params, nil
}

// errBadEscape reports a '%' not followed by two hex digits.
var errBadEscape = errors.New("invalid percent-encoding")

// percentDecode decodes %XX sequences once and leaves every other byte,
// '+' included, as it is.
func percentDecode(s string) (string, error) {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%w at byte %d of %q", errBadEscape, i, s)
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("%w at byte %d of %q", errBadEscape, i, s)
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return string(b), nil
}

// unhex decodes one hex digit.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// exitedMarker is written to a daemon's log when it exits, so waiters stop
// waiting for lines that will never come.
const exitedMarker = "s3-helper exited"

// listenAddrs reads the proxy and admin addresses from JSON log lines.
func listenAddrs(logs string) (addr, admin string) {
	for line := range strings.SplitSeq(logs, "\n") {
		var entry struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &entry) == nil {
			switch entry.Msg {
			case "listening":
				addr = entry.Addr
			case "admin listening":
				admin = entry.Addr
			}
		}
	}
	return addr, admin
}

// awaitListening waits for a daemon's "listening" line (and, with
// withAdmin, its "admin listening" line) and returns the addresses.
func awaitListening(t *testing.T, logs *syncBuffer, withAdmin bool) (addr, admin string) {
	t.Helper()
	text, _ := logs.waitUntil(10*time.Second, func(text string) bool {
		addr, admin = listenAddrs(text)
		return addr != "" && (admin != "" || !withAdmin) || strings.Contains(text, exitedMarker)
	})
	if addr == "" || withAdmin && admin == "" {
		t.Fatalf("s3-helper did not start:\n%s", text)
	}
	return addr, admin
}

func get(t *testing.T, method, target string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, target, err)
	}
	return resp, body
}

// roundTripperFunc injects transport faults.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// timeoutError is a transport error that reports a timeout.
type timeoutError struct{}

func (timeoutError) Error() string   { return "net/http: timeout awaiting response headers" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// udpListener receives statsd packets on a real socket.
func udpListener(t *testing.T) (*net.UDPConn, net.Conn) {
	t.Helper()
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conn, err := net.Dial("udp", ln.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	return ln, conn
}

// readPackets reads datagrams until want lines arrived or 2 s passed.
func readPackets(t *testing.T, ln *net.UDPConn, wantLines int) []string {
	t.Helper()
	var packets []string
	lines := 0
	buf := make([]byte, 65536)
	ln.SetReadDeadline(time.Now().Add(2 * time.Second))
	for lines < wantLines {
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("after %d of %d lines: %v", lines, wantLines, err)
		}
		packets = append(packets, string(buf[:n]))
		lines += strings.Count(string(buf[:n]), "\n")
	}
	return packets
}

func envFrom(m map[string]string) func(string) string {
	var environ []string
	for k, v := range m {
		environ = append(environ, k+"="+v)
	}
	return getenvOf(environ)
}

// daemon is run() in a goroutine.
type daemon struct {
	addr  string
	admin string
	logs  *syncBuffer
	stop  context.CancelFunc
	done  chan error
}

// startDaemon runs s3-helper in-process and waits for its listening line.
func startDaemon(t *testing.T, args []string, env map[string]string) *daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{logs: &syncBuffer{}, stop: cancel, done: make(chan error, 1)}
	args = append([]string{"-log-format", "json", "-listen", "127.0.0.1:0"}, args...)
	go func() {
		err := run(ctx, args, envFrom(env), io.Discard, d.logs)
		fmt.Fprintf(d.logs, "%s: %v\n", exitedMarker, err)
		d.done <- err
	}()
	wantAdmin := slices.Contains(args, "-admin")
	d.addr, d.admin = awaitListening(t, d.logs, wantAdmin)
	t.Cleanup(cancel)
	// Ready once the first credential fetch has ended, either way.
	if _, ok := d.logs.waitUntil(10*time.Second, func(text string) bool {
		return strings.Contains(text, `"msg":"credentials refreshed"`) || strings.Contains(text, `"msg":"credential refresh failed"`) ||
			strings.Contains(text, exitedMarker)
	}); !ok {
		t.Fatalf("no credential fetch ended:\n%s", d.logs)
	}
	return d
}

func staticEnv() map[string]string {
	return map[string]string{"AWS_ACCESS_KEY_ID": testAKID, "AWS_SECRET_ACCESS_KEY": testSecret, "AWS_SESSION_TOKEN": testToken}
}

// The bucket and access key the stand-ins serve.
const (
	testBucket = "media"
	testAKID   = "AKIATESTPROXY"
)

// The secret and session token of the test credentials.
const (
	testSecret = "test/secret+KEY0123456789abcdefghijklmnop"
	testToken  = "IQoJtest-session-token/with+base64=="
)

// needTools ends the test unless every named program is installed. The
// suite's machine has them all (scripts/testenv.sh install, the README's
// apt-get line), so a missing one fails the test; it is skipped only when
// S3_HELPER_E2E=0 runs the unit tests alone, outside CI.
func needTools(t *testing.T, names ...string) {
	t.Helper()
	var missing []string
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("S3_HELPER_E2E") == "0" && os.Getenv("CI") != "true" {
		t.Skipf("S3_HELPER_E2E=0 and %s not installed", strings.Join(missing, ", "))
	}
	t.Fatalf("%s not installed: scripts/testenv.sh install (or the README's apt-get line) installs it", strings.Join(missing, ", "))
}
