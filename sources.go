package main

// Credential sources beside IMDS, as the AWS SDKs implement them: the
// container endpoint (ECS task roles, EKS Pod Identity) and STS
// (AssumeRoleWithWebIdentity for IRSA and other OIDC federation, AssumeRole
// for a role in another account). Each only produces a validated credential
// set; the cache in cache.go decides when to ask.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	// containerHost is where AWS_CONTAINER_CREDENTIALS_RELATIVE_URI points (ECS).
	containerHost = "http://169.254.170.2"
	// maxSourceBodyBytes caps every answer of a credential source; a
	// credentials document is under 2 KiB.
	maxSourceBodyBytes = 64 << 10
	// maxTokenFileBytes caps a token file (a web identity JWT is 1–2 KiB).
	maxTokenFileBytes = 64 << 10
	// sourceAttempts is how many times a transient failure (5xx, network,
	// throttling) is tried in one fetch; the cache's backoff covers the rest.
	sourceAttempts = 3
	// stsVersion is the STS API version every call names.
	stsVersion = "2011-06-15"
	// serviceSTS is the signing name of STS.
	serviceSTS = "sts"
)

// sourceHTTPClient is the client every source uses unless a test injects
// one: short timeouts, no HTTP proxy, no redirects (a redirect could carry
// a token elsewhere). dial, if set, replaces the dialer.
func sourceHTTPClient(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	if dial == nil {
		dial = (&net.Dialer{Timeout: 2 * time.Second}).DialContext
	}
	return &http.Client{
		Timeout: fetchTimeout,
		Transport: &http.Transport{
			DialContext:           dial,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: 5 * time.Second,
			MaxIdleConns:          2,
			IdleConnTimeout:       30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// sourceBackoff paces the attempts of one fetch: full jitter over 200 ms
// doubling, so a fleet restarted at once does not call STS in step.
var sourceBackoff = backoff{base: 200 * time.Millisecond, ceiling: 2 * time.Second}

// transientError marks a failure worth another attempt within one fetch.
type transientError struct{ err error }

// Error returns the cause's text.
func (e transientError) Error() string { return e.err.Error() }

// Unwrap returns the cause.
func (e transientError) Unwrap() error { return e.err }

// withRetries runs attempt until it succeeds, fails for good, or has failed
// sourceAttempts times with a transientError; pause(n) is the wait before
// attempt n+1 (nil: sourceBackoff with full jitter).
func withRetries(ctx context.Context, pause func(n int) time.Duration, attempt func() (*Credentials, error)) (*Credentials, error) {
	for n := 1; ; n++ {
		creds, err := attempt()
		var te transientError
		if err == nil || !errors.As(err, &te) || n == sourceAttempts {
			return creds, err
		}
		d := sourceBackoff.fullJitter(n, rand.Float64())
		if pause != nil {
			d = pause(n)
		}
		if err := sleepCtx(ctx, d); err != nil {
			return nil, err
		}
	}
}

// readAnswer sends req and reads the whole answer, bounded, so a timeout
// cannot race the read. A network failure is transient; an oversized answer
// is not. The body is closed.
func readAnswer(client *http.Client, req *http.Request, peer string) (*http.Response, []byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, transientError{fmt.Errorf("%s: %w", peer, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSourceBodyBytes+1))
	if err != nil {
		return nil, nil, transientError{fmt.Errorf("%s: read body: %w", peer, err)}
	}
	if len(body) > maxSourceBodyBytes {
		return nil, nil, fmt.Errorf("%s: answer exceeds %d bytes", peer, maxSourceBodyBytes)
	}
	return resp, body, nil
}

// readTokenFile reads a token the platform rotates (kubelet, Pod Identity
// agent): it is read on every fetch, bounded, and never quoted in an error.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFileBytes+1))
	if err != nil {
		return "", fmt.Errorf("read token file %s: %w", path, err)
	}
	if len(b) > maxTokenFileBytes {
		return "", fmt.Errorf("token file %s exceeds %d bytes", path, maxTokenFileBytes)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return token, nil
}

// containerProvider fetches credentials from the container endpoint
// (https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html).
type containerProvider struct {
	// url is the full endpoint URL, already checked by checkContainerURL.
	url string
	// authTokenFile, re-read on every fetch, else authToken, is the
	// Authorization value; both empty means none.
	authTokenFile, authToken string
	// client sends the requests; nil means sourceHTTPClient with
	// allowedContainerDial.
	client *http.Client
	// lookupIP resolves host names for the dial check; nil means the
	// system resolver.
	lookupIP func(ctx context.Context, host string) ([]net.IP, error)
	// pause is the wait between attempts; nil means 200 ms doubling.
	pause func(n int) time.Duration
	// now is the clock; nil means time.Now.
	now clock
}

// containerDocument is the container endpoint's answer, success or error.
type containerDocument struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	Expiration      string
	Code            string `json:"code"`
	Message         string `json:"message"`
}

// Retrieve fetches and validates one credential set, retrying 5xx answers
// and network errors.
func (p *containerProvider) Retrieve(ctx context.Context) (*Credentials, error) {
	return withRetries(ctx, p.pause, func() (*Credentials, error) { return p.fetch(ctx) })
}

// fetch makes one request to the endpoint.
func (p *containerProvider) fetch(ctx context.Context) (*Credentials, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return nil, fmt.Errorf("container endpoint: %w", err)
	}
	auth, err := p.authorization()
	if err != nil {
		return nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, body, err := readAnswer(p.httpClient(), req, "container endpoint "+p.url)
	if err != nil {
		return nil, err
	}
	var doc containerDocument
	jsonErr := json.Unmarshal(body, &doc)
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("container endpoint %s answered %d %s", p.url, resp.StatusCode, http.StatusText(resp.StatusCode))
		if jsonErr == nil && (doc.Code != "" || doc.Message != "") {
			err = fmt.Errorf("%w: %s: %s", err, printable(doc.Code), printable(doc.Message))
		}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return nil, transientError{err}
		}
		return nil, err
	}
	if jsonErr != nil {
		return nil, fmt.Errorf("container endpoint %s: credentials document is not JSON (%d bytes)", p.url, len(body))
	}
	creds, err := validCredentials(credentialFields{doc.AccessKeyID, doc.SecretAccessKey, doc.Token, doc.Expiration}, p.now.read(), sourceContainer)
	if err != nil {
		return nil, fmt.Errorf("container endpoint %s: %w", p.url, err)
	}
	return creds, nil
}

// authorization returns the Authorization value: the token file's content
// (re-read: Pod Identity rotates it) or the fixed token.
func (p *containerProvider) authorization() (string, error) {
	token := p.authToken
	if p.authTokenFile != "" {
		var err error
		if token, err = readTokenFile(p.authTokenFile); err != nil {
			return "", fmt.Errorf("container authorization: %w", err)
		}
	}
	if strings.ContainsAny(token, "\r\n") {
		return "", errors.New("container authorization token contains a line break")
	}
	return token, nil
}

// httpClient returns the injected client or one whose dialer enforces the
// endpoint's allowed addresses.
func (p *containerProvider) httpClient() *http.Client {
	if p.client != nil {
		return p.client
	}
	u, _ := url.Parse(p.url)
	if u != nil && u.Scheme == "https" {
		return sourceHTTPClient(nil)
	}
	return sourceHTTPClient(allowedContainerDial(p.lookupIP))
}

// allowedContainerIP reports the addresses an http:// container endpoint
// may have, as the AWS SDKs enforce: loopback, the ECS agent and the EKS
// Pod Identity agent.
func allowedContainerIP(ip net.IP) bool {
	return ip.IsLoopback() || ip.Equal(net.ParseIP("169.254.170.2")) ||
		ip.Equal(net.ParseIP("169.254.170.23")) || ip.Equal(net.ParseIP("fd00:ec2::23"))
}

// allowedContainerDial dials an http:// container endpoint only when every
// address its host resolves to is allowed, so a credential token never goes
// over plain HTTP off the host.
func allowedContainerDial(lookupIP func(ctx context.Context, host string) ([]net.IP, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if lookupIP == nil {
		lookupIP = func(ctx context.Context, host string) ([]net.IP, error) {
			return net.DefaultResolver.LookupIP(ctx, "ip", host)
		}
	}
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		ips := []net.IP{net.ParseIP(host)}
		if ips[0] == nil {
			if ips, err = lookupIP(ctx, host); err != nil {
				return nil, err
			}
		}
		if err := checkContainerIPs(host, ips); err != nil {
			return nil, err
		}
		return dialer.DialContext(ctx, network, net.JoinHostPort(ips[0].String(), port))
	}
}

// checkContainerIPs requires every address of host to be allowed.
func checkContainerIPs(host string, ips []net.IP) error {
	if len(ips) == 0 {
		return fmt.Errorf("container endpoint host %q resolves to no address", host)
	}
	for _, ip := range ips {
		if !allowedContainerIP(ip) {
			return fmt.Errorf("container endpoint host %q resolves to %s: over http:// only loopback, "+
				"169.254.170.2, 169.254.170.23 and fd00:ec2::23 are allowed (use https:// for another host)", host, ip)
		}
	}
	return nil
}

// checkContainerURL validates AWS_CONTAINER_CREDENTIALS_FULL_URI: http or
// https with a host, and over http a literal address must be allowed (host
// names are checked when dialled).
func checkContainerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("must be an http:// or https:// URL with a host")
	}
	if u.Scheme == "http" {
		if ip := net.ParseIP(u.Hostname()); ip != nil {
			return checkContainerIPs(u.Hostname(), []net.IP{ip})
		}
	}
	return nil
}

// stsClient calls STS's query API with form bodies
// (https://docs.aws.amazon.com/STS/latest/APIReference/welcome.html).
type stsClient struct {
	// endpoint is the base URL, e.g. https://sts.eu-west-1.amazonaws.com.
	endpoint string
	// client sends the requests; nil means sourceHTTPClient.
	client *http.Client
	// pause is the wait between attempts; nil means 200 ms doubling.
	pause func(n int) time.Duration
	// now is the clock; nil means time.Now.
	now clock
}

// stsResult is the part of an AssumeRole* answer s3-helper uses.
type stsResult struct {
	Credentials struct {
		AccessKeyID     string `xml:"AccessKeyId"`
		SecretAccessKey string
		SessionToken    string
		Expiration      string
	}
}

// stsAnswer is an STS XML answer: one of the results, or an error.
type stsAnswer struct {
	WebIdentity stsResult `xml:"AssumeRoleWithWebIdentityResult"`
	AssumeRole  stsResult `xml:"AssumeRoleResult"`
	Error       struct {
		Code, Message string
	}
}

// stsError is an error answer from STS.
type stsError struct {
	status        int
	code, message string
}

// Error names the status, the code and STS's message (bounded).
func (e *stsError) Error() string {
	return fmt.Sprintf("STS answered %d %s: %s", e.status, printable(e.code), printable(e.message))
}

// transientSTSCode reports the STS error codes worth another attempt: the identity provider or STS
// was briefly unavailable.
func transientSTSCode(code string) bool {
	switch code {
	case "IDPCommunicationError", "Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable", "InternalFailure":
		return true
	}
	return false
}

// call POSTs form to STS, signed by sign when it is not nil, and returns the
// validated credentials of the answer, as source.
func (s *stsClient) call(ctx context.Context, form url.Values, source string, sign func(h http.Header, host string, body []byte)) (*Credentials, error) {
	return withRetries(ctx, s.pause, func() (*Credentials, error) {
		body := []byte(form.Encode())
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint+"/", bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("STS request: %w", err)
		}
		req.Header.Set("Content-Type", stsContentType)
		if sign != nil {
			sign(req.Header, req.URL.Host, body)
		}
		client := s.client
		if client == nil {
			client = sourceHTTPClient(nil)
		}
		resp, raw, err := readAnswer(client, req, "STS "+s.endpoint)
		if err != nil {
			return nil, err
		}
		var answer stsAnswer
		xmlErr := xml.Unmarshal(raw, &answer)
		if resp.StatusCode != http.StatusOK {
			serr := &stsError{status: resp.StatusCode, code: answer.Error.Code, message: answer.Error.Message}
			if xmlErr != nil {
				serr.code = "(no XML error)"
			}
			if resp.StatusCode >= 500 || transientSTSCode(answer.Error.Code) {
				return nil, transientError{serr}
			}
			return nil, serr
		}
		if xmlErr != nil {
			return nil, fmt.Errorf("STS %s: answer is not an STS XML document (%d bytes)", s.endpoint, len(raw))
		}
		c := answer.WebIdentity.Credentials
		if c.AccessKeyID == "" {
			c = answer.AssumeRole.Credentials
		}
		return validCredentials(credentialFields{c.AccessKeyID, c.SecretAccessKey, c.SessionToken, c.Expiration}, s.now.read(), source)
	})
}

// stsForm is the form every AssumeRole* call sends.
func stsForm(action, roleARN, sessionName string) url.Values {
	return url.Values{"Action": {action}, "Version": {stsVersion}, "RoleArn": {roleARN}, "RoleSessionName": {sessionName}}
}

// stsContentType is the form body's type, signed with it for AssumeRole.
const stsContentType = "application/x-www-form-urlencoded; charset=utf-8"

// webIdentityProvider exchanges a web identity token (IRSA, any OIDC
// federation) for role credentials with AssumeRoleWithWebIdentity, which is
// not signed: the token is the authentication.
type webIdentityProvider struct {
	sts                             *stsClient
	roleARN, sessionName, tokenFile string
}

// Retrieve reads the token file afresh (the kubelet rotates it) and calls STS.
func (p *webIdentityProvider) Retrieve(ctx context.Context) (*Credentials, error) {
	token, err := readTokenFile(p.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("web identity for role %s: %w", p.roleARN, err)
	}
	form := stsForm("AssumeRoleWithWebIdentity", p.roleARN, p.sessionName)
	form.Set("WebIdentityToken", token)
	creds, err := p.sts.call(ctx, form, sourceWebIdentity, nil)
	if err != nil {
		return nil, fmt.Errorf("AssumeRoleWithWebIdentity for role %s with the token in %s: %w%s", p.roleARN, p.tokenFile, err, webIdentityHint(err))
	}
	return creds, nil
}

// webIdentityHint names the usual fix for STS's documented refusals.
func webIdentityHint(err error) string {
	var serr *stsError
	if !errors.As(err, &serr) {
		return ""
	}
	switch serr.code {
	case "InvalidIdentityToken":
		return " (STS could not verify the token: is the cluster's OIDC provider registered in IAM?)"
	case "ExpiredTokenException":
		return " (the token has expired: the kubelet should have rotated the file; is it mounted from a projected volume?)"
	case "AccessDenied":
		return " (the role's trust policy does not allow this service account: check its sts:AssumeRoleWithWebIdentity condition)"
	}
	return ""
}

// assumeRoleProvider assumes a role (typically in another account) with
// credentials from base, signing the AssumeRole call with SigV4 for STS.
type assumeRoleProvider struct {
	sts  *stsClient
	base credentialGetter
	// signer signs for STS in the STS region; it is not the S3 signer, so
	// the S3 request path keeps its own cached signing key.
	signer                           *Signer
	roleARN, externalID, sessionName string
	// now is the clock; nil means time.Now.
	now clock
}

// Retrieve calls AssumeRole with the current base credentials.
func (p *assumeRoleProvider) Retrieve(ctx context.Context) (*Credentials, error) {
	now := p.now.read()
	base, err := p.base.Get(ctx, now)
	if err != nil {
		return nil, fmt.Errorf("assume role %s: base credentials: %w", p.roleARN, err)
	}
	form := stsForm("AssumeRole", p.roleARN, p.sessionName)
	if p.externalID != "" {
		form.Set("ExternalId", p.externalID)
	}
	sign := func(h http.Header, host string, body []byte) {
		sum := sha256.Sum256(body)
		in := &signingRequest{method: http.MethodPost, host: host, uri: "/",
			headers: []headerField{{"content-type", stsContentType}}, payloadHash: hex.EncodeToString(sum[:]),
			omitContentSHA256: true} // S3's header; STS does not take it
		p.signer.Sign(h, in, base, now)
	}
	creds, err := p.sts.call(ctx, form, sourceAssumeRole, sign)
	if err != nil {
		return nil, fmt.Errorf("AssumeRole %s with %s credentials: %w", p.roleARN, base.Source, err)
	}
	return creds, nil
}

// defaultSessionName is a RoleSessionName when none is configured: STS
// allows 2–64 characters of [\w+=,.@-], and the time tells sessions apart
// in CloudTrail.
func defaultSessionName(now time.Time) string {
	return "s3-helper-" + strconv.FormatInt(now.Unix(), 10)
}

// validSessionName reports whether s fits STS's RoleSessionName rule.
func validSessionName(s string) bool {
	if len(s) < 2 || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !(isUnreserved(c) && c != '~' || strings.IndexByte("+=,@", c) >= 0) {
			return false
		}
	}
	return true
}
