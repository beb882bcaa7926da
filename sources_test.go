package main

// The credential sources against stand-ins that answer in the documented
// formats: precedence, container endpoint rules, web identity, AssumeRole.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestContainerURLRules(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{"http://127.0.0.1:8080/creds", true},
		{"http://[::1]/creds", true},
		{"http://169.254.170.2/v2/credentials/x", true},
		{"http://169.254.170.23/v1/credentials", true},
		{"http://[fd00:ec2::23]/v1/credentials", true},
		{"http://10.0.0.5/creds", false},
		{"http://169.254.169.254/creds", false},
		{"https://10.0.0.5/creds", true},
		{"https://creds.example.com/x", true},
		{"http://creds.example.com/x", true}, // checked when dialled
		{"ftp://127.0.0.1/x", false},
		{"/relative", false},
	}
	for _, tt := range tests {
		if err := checkContainerURL(tt.url); (err == nil) != tt.ok {
			t.Errorf("checkContainerURL(%q) = %v, want ok=%v", tt.url, err, tt.ok)
		}
	}
}

// TestContainerDialChecksResolvedAddresses: over http://, a host name is
// dialled only when every address it resolves to is allowed.
func TestContainerDialChecksResolvedAddresses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	lookup := func(_ context.Context, host string) ([]net.IP, error) {
		switch host {
		case "agent.local":
			return []net.IP{net.ParseIP("127.0.0.1")}, nil
		case "mixed.local":
			return []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.1.2.3")}, nil
		case "remote.local":
			return []net.IP{net.ParseIP("10.1.2.3")}, nil
		}
		return nil, errors.New("no such host")
	}
	dial := allowedContainerDial(lookup)
	if c, err := dial(t.Context(), "tcp", "agent.local:"+port); err != nil {
		t.Errorf("dial agent.local (loopback) = %v", err)
	} else {
		c.Close()
	}
	for _, host := range []string{"remote.local", "mixed.local", "10.1.2.3"} {
		if c, err := dial(t.Context(), "tcp", host+":"+port); err == nil || !strings.Contains(err.Error(), "only loopback") {
			if c != nil {
				c.Close()
			}
			t.Errorf("dial %s = %v, want a refusal naming the rule", host, err)
		}
	}
}

func TestContainerProvider(t *testing.T) {
	f := &fakeContainerEndpoint{wantAuth: "first-token", akid: "ASIACONTAINER1", expires: time.Now().Add(time.Hour)}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("first-token\n"), 0o600)
	p := &containerProvider{url: srv.URL + "/v1/credentials", authTokenFile: tokenFile, pause: func(int) time.Duration { return 0 }}

	creds, err := p.Retrieve(t.Context())
	if err != nil || creds.AccessKeyID != "ASIACONTAINER1" || creds.SessionToken != testToken || creds.Source != sourceContainer {
		t.Fatalf("Retrieve = %v, %v", creds, err)
	}
	// The token file rotates between fetches: the new value is sent.
	os.WriteFile(tokenFile, []byte("second-token"), 0o600)
	f.set(func(f *fakeContainerEndpoint) { f.wantAuth = "second-token"; f.akid = "ASIACONTAINER2" })
	if creds, err := p.Retrieve(t.Context()); err != nil || creds.AccessKeyID != "ASIACONTAINER2" {
		t.Fatalf("Retrieve after the token file rotated = %v, %v", creds, err)
	}
	// A 4xx error document is reported with its code and message, bounded
	// and on one line, and not retried.
	os.WriteFile(tokenFile, []byte("stale-token"), 0o600)
	f.set(func(f *fakeContainerEndpoint) { f.requests = 0 })
	_, err = p.Retrieve(t.Context())
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "InvalidToken") ||
		strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "stale-token") {
		t.Errorf("Retrieve with a rejected token = %v", err)
	}
	if f.requests != 1 {
		t.Errorf("requests for a 401 = %d, want 1 (not retried)", f.requests)
	}
	// 5xx is retried, and succeeds when the agent recovers.
	os.WriteFile(tokenFile, []byte("second-token"), 0o600)
	f.set(func(f *fakeContainerEndpoint) { f.failWith = 503; f.requests = 0 })
	if _, err := p.Retrieve(t.Context()); err == nil || !strings.Contains(err.Error(), "agent unavailable") {
		t.Errorf("Retrieve during an agent outage = %v", err)
	}
	if f.requests != sourceAttempts {
		t.Errorf("requests for a 503 = %d, want %d", f.requests, sourceAttempts)
	}
	// A fixed token from the environment is used when there is no file.
	f.set(func(f *fakeContainerEndpoint) { f.failWith = 0; f.wantAuth = "env-token" })
	p2 := &containerProvider{url: srv.URL, authToken: "env-token"}
	if _, err := p2.Retrieve(t.Context()); err != nil {
		t.Errorf("Retrieve with AWS_CONTAINER_AUTHORIZATION_TOKEN = %v", err)
	}
	if _, err := (&containerProvider{url: srv.URL, authToken: "a\r\nX-Injected: 1"}).Retrieve(t.Context()); err == nil || !strings.Contains(err.Error(), "line break") {
		t.Errorf("Retrieve with a token holding CRLF = %v", err)
	}
}

func TestContainerDocumentValidation(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		name, body, want string
	}{
		{"no token", `{"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"` + future + `"}`, "lacks Token"},
		{"expired", `{"AccessKeyId":"A","SecretAccessKey":"S","Token":"T","Expiration":"2020-01-01T00:00:00Z"}`, "expired at"},
		{"bad expiration", `{"AccessKeyId":"A","SecretAccessKey":"S","Token":"T","Expiration":"tomorrow"}`, "not an RFC 3339 time"},
		{"not JSON", `<html>`, "not JSON"},
		{"too large", `{"AccessKeyId":"` + strings.Repeat("A", maxSourceBodyBytes) + `"}`, "exceeds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, tt.body) }))
			defer srv.Close()
			_, err := (&containerProvider{url: srv.URL}).Retrieve(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Retrieve = %v, want %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), testSecret) {
				t.Error("the error quotes the secret")
			}
		})
	}
}

func TestWebIdentityProvider(t *testing.T) {
	f, sts := newTestSTS(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("jwt-1\n"), 0o600)
	p := &webIdentityProvider{sts: sts, roleARN: "arn:aws:iam::111122223333:role/packager", sessionName: defaultSessionName(time.Now()), tokenFile: tokenFile}
	creds, err := p.Retrieve(t.Context())
	if err != nil || creds.AccessKeyID != "ASIASTS1" || creds.SessionToken != testToken || creds.Source != sourceWebIdentity {
		t.Fatalf("Retrieve = %v, %v", creds, err)
	}
	call := f.calls[len(f.calls)-1]
	if call.Get("RoleArn") != p.roleARN || call.Get("WebIdentityToken") != "jwt-1" || !validSessionName(call.Get("RoleSessionName")) {
		t.Errorf("STS saw %v", call)
	}
	// The kubelet rotates the file: the next fetch sends the new token.
	os.WriteFile(tokenFile, []byte("jwt-2"), 0o600)
	f.mu.Lock()
	f.wantToken = "jwt-2"
	f.mu.Unlock()
	if _, err := p.Retrieve(t.Context()); err != nil {
		t.Fatalf("Retrieve after rotation = %v", err)
	}

	tests := []struct {
		errors []string
		ok     bool
		want   string
	}{
		{[]string{"IDPCommunicationError"}, true, ""},
		{[]string{"Throttling", "IDPCommunicationError"}, true, ""},
		{[]string{"IDPCommunicationError", "IDPCommunicationError", "IDPCommunicationError"}, false, "IDPCommunicationError"},
		{[]string{"InvalidIdentityToken"}, false, "OIDC provider"},
		{[]string{"ExpiredTokenException"}, false, "has expired"},
		{[]string{"AccessDenied"}, false, "trust policy"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.errors, ","), func(t *testing.T) {
			f.mu.Lock()
			f.errors, f.calls = tt.errors, nil
			f.mu.Unlock()
			_, err := p.Retrieve(t.Context())
			if (err == nil) != tt.ok {
				t.Fatalf("Retrieve = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				for _, want := range []string{tt.want, p.roleARN, tokenFile} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error lacks %q: %v", want, err)
					}
				}
				if strings.Contains(err.Error(), "jwt-2") {
					t.Errorf("error quotes the token: %v", err)
				}
			}
			if transient := tt.errors[0] != "InvalidIdentityToken" && tt.errors[0] != "ExpiredTokenException" && tt.errors[0] != "AccessDenied"; !transient && len(f.calls) != 1 {
				t.Errorf("STS calls for %s = %d, want 1 (not retried)", tt.errors[0], len(f.calls))
			}
		})
	}
	os.WriteFile(tokenFile, nil, 0o600)
	if _, err := p.Retrieve(t.Context()); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("Retrieve with an empty token file = %v", err)
	}
}

func TestAssumeRoleProvider(t *testing.T) {
	f, sts := newTestSTS(t)
	base := &credentialCache{provider: staticProvider{newCredentials("AKIABASE", "base/secret+key", "", time.Time{}, sourceEnvironment)},
		log: slog.New(slog.DiscardHandler)}
	p := &assumeRoleProvider{sts: sts, base: base, signer: &Signer{Region: "eu-west-1", Service: serviceSTS},
		roleARN: "arn:aws:iam::444455556666:role/media-reader", externalID: "ext-123", sessionName: "packager-1"}
	creds, err := p.Retrieve(t.Context())
	if err != nil || creds.AccessKeyID != "ASIASTS1" || creds.Source != sourceAssumeRole {
		t.Fatalf("Retrieve = %v, %v", creds, err)
	}
	call := f.calls[0]
	if call.Get("ExternalId") != "ext-123" || call.Get("RoleSessionName") != "packager-1" || call.Get("RoleArn") != p.roleARN {
		t.Errorf("STS saw %v", call)
	}
	// Signed with another secret, STS refuses: the stand-in really checks.
	p.base = &credentialCache{provider: staticProvider{newCredentials("AKIABASE", "wrong", "", time.Time{}, sourceEnvironment)},
		log: slog.New(slog.DiscardHandler)}
	if _, err := p.Retrieve(t.Context()); err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Errorf("Retrieve signed with a wrong secret = %v, want SignatureDoesNotMatch", err)
	}
}

// TestCacheGuaranteesForEachSource: whatever the source, the cache keeps
// serving the last good set while the source fails, and a forced refresh
// (S3 rejected the set) picks up a new one once the source recovers.
func TestCacheGuaranteesForEachSource(t *testing.T) {
	container := &fakeContainerEndpoint{akid: "ASIAONE", expires: time.Now().Add(time.Hour)}
	containerSrv := httptest.NewServer(container)
	t.Cleanup(containerSrv.Close)
	stsFake, sts := newTestSTS(t)
	stsFake.akid = "ASIAONE"
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("jwt-1"), 0o600)
	base := &credentialCache{provider: staticProvider{newCredentials("AKIABASE", "base/secret+key", "", time.Time{}, sourceEnvironment)},
		log: slog.New(slog.DiscardHandler)}
	sources := []struct {
		name     string
		provider credentialProvider
		breakIt  func()
		rotate   func()
	}{
		{"container", &containerProvider{url: containerSrv.URL, pause: func(int) time.Duration { return 0 }},
			func() { container.set(func(f *fakeContainerEndpoint) { f.failWith = 500 }) },
			func() { container.set(func(f *fakeContainerEndpoint) { f.failWith = 0; f.akid = "ASIATWO" }) }},
		{"web identity", &webIdentityProvider{sts: sts, roleARN: "arn:aws:iam::1:role/r", sessionName: "s3-helper-1", tokenFile: tokenFile},
			func() { os.WriteFile(tokenFile, []byte("jwt-revoked"), 0o600) },
			func() {
				os.WriteFile(tokenFile, []byte("jwt-1"), 0o600)
				stsFake.mu.Lock()
				stsFake.akid = "ASIATWO"
				stsFake.mu.Unlock()
			}},
		{"assume role", &assumeRoleProvider{sts: sts, base: base, signer: &Signer{Region: "us-east-1", Service: serviceSTS},
			roleARN: "arn:aws:iam::1:role/r", sessionName: "s3-helper-1"},
			func() {
				stsFake.mu.Lock()
				stsFake.akid = "ASIAONE"
				stsFake.errors = []string{"AccessDenied", "AccessDenied", "AccessDenied"}
				stsFake.mu.Unlock()
			},
			func() {
				stsFake.mu.Lock()
				stsFake.errors, stsFake.akid = nil, "ASIATWO"
				stsFake.mu.Unlock()
			}},
	}
	for _, src := range sources {
		t.Run(src.name, func(t *testing.T) {
			stsFake.mu.Lock()
			stsFake.akid, stsFake.errors = "ASIAONE", nil
			stsFake.mu.Unlock()
			now := time.Now()
			c := &credentialCache{provider: src.provider, log: slog.New(slog.DiscardHandler), now: func() time.Time { return now }}
			first, err := c.Get(t.Context(), now)
			if err != nil || first.AccessKeyID != "ASIAONE" {
				t.Fatalf("first Get = %v, %v", first, err)
			}
			src.breakIt()
			if _, err := c.Refresh(t.Context(), first); !errors.Is(err, errSameCredentials) {
				t.Errorf("forced refresh while the source fails = %v, want errSameCredentials", err)
			}
			if got, err := c.Get(t.Context(), now); err != nil || got != first {
				t.Errorf("Get while the source fails = %v, %v; want the cached set", got, err)
			}
			src.rotate()
			now = now.Add(minForcedRefreshInterval) // the forced-refresh limit has passed
			if got, err := c.Refresh(t.Context(), first); err != nil || got.AccessKeyID != "ASIATWO" {
				t.Errorf("forced refresh after recovery = %v, %v; want ASIATWO", got, err)
			}
		})
	}
}

func TestCredentialCachesFromEnvironment(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantURL string
		layers  int
	}{
		{"ECS relative URI", map[string]string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc"}, nil,
			"http://169.254.170.2/v2/credentials/abc", 1},
		{"Pod Identity full URI", map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
			"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"}, nil,
			"http://169.254.170.23/v1/credentials", 1},
		{"assume role on top", map[string]string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc"},
			[]string{"-assume-role", "arn:aws:iam::444455556666:role/media-reader"}, "http://169.254.170.2/v2/credentials/abc", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadConfig(append([]string{"-bucket", "media", "-region", "eu-west-1"}, tt.args...), envFrom(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			caches := newCredentialCaches(cfg, envFrom(tt.env), slog.New(slog.DiscardHandler), nil)
			if len(caches) != tt.layers {
				t.Fatalf("caches = %d, want %d", len(caches), tt.layers)
			}
			cp, ok := caches[0].provider.(*containerProvider)
			if !ok || cp.url != tt.wantURL {
				t.Errorf("provider = %#v, want a container provider for %s", caches[0].provider, tt.wantURL)
			}
			if tt.layers == 2 {
				ar := caches[1].provider.(*assumeRoleProvider)
				if ar.sts.endpoint != "https://sts.eu-west-1.amazonaws.com" || ar.base != caches[0] {
					t.Errorf("assume-role provider: endpoint %s, base %p", ar.sts.endpoint, ar.base)
				}
			}
		})
	}
}

// TestSourcesGiveUpOnAHangingPeer: a container endpoint or STS that accepts
// the request and never answers costs a bounded fetch (the client's
// response-header timeout, retried sourceAttempts times), never a stuck
// refresher; and the error says it timed out.
func TestSourcesGiveUpOnAHangingPeer(t *testing.T) {
	var requests atomic.Int64
	stop := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		io.Copy(io.Discard, r.Body) // so the server notices the client leaving
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(stop) }) // runs first: no handler outlives the test
	impatient := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 50 * time.Millisecond}}
	noPause := func(int) time.Duration { return 0 }
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("jwt"), 0o600)
	providers := map[string]credentialProvider{
		"container":    &containerProvider{url: hang.URL, client: impatient, pause: noPause},
		"web identity": &webIdentityProvider{sts: &stsClient{endpoint: hang.URL, client: impatient, pause: noPause}, roleARN: "arn:aws:iam::1:role/r", sessionName: "s3-helper-1", tokenFile: tokenFile},
	}
	for name, p := range providers {
		t.Run(name, func(t *testing.T) {
			requests.Store(0)
			_, err := p.Retrieve(t.Context())
			if err == nil || !strings.Contains(err.Error(), "timeout") {
				t.Errorf("Retrieve from a hanging peer = %v, want a timeout", err)
			}
			if n := requests.Load(); n != sourceAttempts {
				t.Errorf("requests = %d, want %d (retried, then given up)", n, sourceAttempts)
			}
		})
	}
}
