package main

// The EC2 instance metadata service client, IMDSv2 only
// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html):
// it produces the instance role's credentials for the credential cache and
// the instance's region.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// defaultIMDSEndpoint is the link-local metadata address.
	defaultIMDSEndpoint = "http://169.254.169.254"
	imdsTokenPath       = "/latest/api/token"
	imdsCredentialsPath = "/latest/meta-data/iam/security-credentials/"
	imdsRegionPath      = "/latest/meta-data/placement/region"
	// imdsTokenTTLHeader asks for a token lifetime on the token PUT.
	imdsTokenTTLHeader = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	// imdsTokenHeader carries the token on metadata GETs.
	imdsTokenHeader = "X-Aws-Ec2-Metadata-Token"
	// defaultIMDSTokenTTL is the longest lifetime IMDS grants.
	defaultIMDSTokenTTL = 6 * time.Hour
	// imdsTokenEarlyRenewal renews a token this long before it lapses, so a
	// token never expires between our check and IMDS's.
	imdsTokenEarlyRenewal = time.Minute
	// maxIMDSBodyBytes caps every IMDS answer; a credentials document is
	// about 1.5 KiB, so anything near this is not one.
	maxIMDSBodyBytes = 64 << 10
	// imdsDialTimeout and imdsResponseTimeout fail fast: IMDS is a
	// link-local service that answers in milliseconds or not at all.
	imdsDialTimeout     = time.Second
	imdsResponseTimeout = 2 * time.Second
)

// imdsClient talks IMDSv2. It is safe for concurrent use, but the
// credential cache calls it from one goroutine at a time.
type imdsClient struct {
	// endpoint is the base URL, e.g. http://169.254.169.254.
	endpoint string
	// role is the instance role; empty means the first listed role.
	role string
	// tokenTTL is the requested token lifetime; zero means 6 hours.
	tokenTTL time.Duration
	// client sends the requests; nil means one with short timeouts and no
	// HTTP proxy (IMDS must never be reached through one).
	client *http.Client
	// now is the clock; nil means time.Now.
	now clock

	clientOnce sync.Once
	mu         sync.Mutex // guards token and tokenExpires
	// token is the IMDSv2 session token; it is a secret.
	token        string
	tokenExpires time.Time
}

// imdsStatusError is a non-2xx answer from IMDS.
type imdsStatusError struct {
	op     string
	status int
}

// Error names the operation, the status and, for a 403, its likely causes.
func (e *imdsStatusError) Error() string {
	msg := fmt.Sprintf("%s: IMDS answered %d %s", e.op, e.status, http.StatusText(e.status))
	if e.status == http.StatusForbidden {
		msg += imdsForbiddenHint
	}
	return msg
}

// imdsForbiddenHint names the documented causes of an IMDS 403
// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html).
const imdsForbiddenHint = ": IMDS refused the request; either something between s3-helper and IMDS " +
	"(an HTTP proxy or sidecar) added X-Forwarded-For, which IMDSv2 rejects, or the instance's metadata " +
	"endpoint is turned off: 'aws ec2 modify-instance-metadata-options --instance-id ID --http-endpoint enabled'"

// errHopLimit is wrapped when the token PUT gets no answer in time.
var errHopLimit = errors.New("no answer to the IMDSv2 token PUT: inside a container the instance's " +
	"IMDSv2 hop limit is probably too low; raise it with " +
	"'aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2' " +
	"or use host networking")

// newIMDSHTTPClient fails fast and never uses an HTTP proxy or follows a redirect.
func newIMDSHTTPClient() *http.Client {
	return &http.Client{
		Timeout: fetchTimeout,
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: imdsDialTimeout}).DialContext,
			ResponseHeaderTimeout: imdsResponseTimeout,
			MaxIdleConns:          2,
			IdleConnTimeout:       30 * time.Second,
		},
		// IMDS never redirects; following one could send the token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// httpClient returns c.client, creating the default once.
func (c *imdsClient) httpClient() *http.Client {
	c.clientOnce.Do(func() {
		if c.client == nil {
			c.client = newIMDSHTTPClient()
		}
	})
	return c.client
}

// sessionToken returns a cached IMDSv2 token, or fetches a new one.
func (c *imdsClient) sessionToken(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now.read()
	if c.token != "" && now.Before(c.tokenExpires) {
		return c.token, nil
	}
	ttl := c.tokenTTL
	if ttl <= 0 {
		ttl = defaultIMDSTokenTTL
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.endpoint+imdsTokenPath, nil)
	if err != nil {
		return "", fmt.Errorf("build IMDS token request: %w", err)
	}
	req.Header.Set(imdsTokenTTLHeader, strconv.Itoa(int(ttl/time.Second)))
	body, err := c.do(req, "fetch IMDSv2 token")
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			return "", fmt.Errorf("%w: %w", errHopLimit, err)
		}
		return "", err
	}
	token := strings.TrimSpace(string(body))
	if token == "" {
		return "", errors.New("fetch IMDSv2 token: empty token")
	}
	c.token = token
	c.tokenExpires = now.Add(ttl - min(imdsTokenEarlyRenewal, ttl/10))
	return token, nil
}

// dropToken forgets the IMDS token after IMDS refused it.
func (c *imdsClient) dropToken() {
	c.mu.Lock()
	c.token = ""
	c.mu.Unlock()
}

// get fetches a metadata path with the token. A 401 means IMDS no longer
// knows the token (it expired or IMDS restarted): fetch a new one and retry
// once, at once, as the AWS SDKs' IMDS client does; no backoff here, the
// cache's refresher paces whole fetches.
func (c *imdsClient) get(ctx context.Context, path string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		token, err := c.sessionToken(ctx)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint+path, nil)
		if err != nil {
			return nil, fmt.Errorf("build IMDS request: %w", err)
		}
		req.Header.Set(imdsTokenHeader, token)
		body, err := c.do(req, "GET "+path)
		var se *imdsStatusError
		if attempt == 0 && errors.As(err, &se) && se.status == http.StatusUnauthorized {
			c.dropToken()
			continue
		}
		return body, err
	}
}

// do sends req and returns the body of a 200 answer, read whole (capped) so
// that a timeout cannot race the read.
func (c *imdsClient) do(req *http.Request, op string) ([]byte, error) {
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIMDSBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read body: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &imdsStatusError{op: op, status: resp.StatusCode}
	}
	if len(body) > maxIMDSBodyBytes {
		return nil, fmt.Errorf("%s: answer exceeds %d bytes", op, maxIMDSBodyBytes)
	}
	return body, nil
}

// roleName returns the configured role or the first one IMDS lists.
func (c *imdsClient) roleName(ctx context.Context) (string, error) {
	if c.role != "" {
		return c.role, nil
	}
	body, err := c.get(ctx, imdsCredentialsPath)
	if err != nil {
		return "", fmt.Errorf("discover instance role: %w", err)
	}
	role, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	role = strings.TrimSpace(role)
	if role == "" {
		return "", errors.New("discover instance role: IMDS lists no role (is an instance profile attached?)")
	}
	return role, nil
}

// imdsCredentialsDocument is the JSON IMDS serves for a role.
type imdsCredentialsDocument struct {
	Code            string
	LastUpdated     string
	Type            string
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string
	Token           string
	Expiration      string
}

// Retrieve fetches the role's current credentials and validates them; a set
// that fails validation is an error, never a cached value.
func (c *imdsClient) Retrieve(ctx context.Context) (*Credentials, error) {
	role, err := c.roleName(ctx)
	if err != nil {
		return nil, err
	}
	body, err := c.get(ctx, imdsCredentialsPath+role)
	if err != nil {
		return nil, fmt.Errorf("fetch credentials of role %q: %w", role, err)
	}
	creds, err := parseIMDSCredentials(body, c.now.read())
	if err != nil {
		return nil, fmt.Errorf("fetch credentials of role %q: %w", role, err)
	}
	return creds, nil
}

// parseIMDSCredentials validates a credentials document. Its errors never
// quote the document, which holds secrets.
func parseIMDSCredentials(body []byte, now time.Time) (*Credentials, error) {
	var doc imdsCredentialsDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("credentials document is not JSON (%d bytes)", len(body))
	}
	if doc.Code != "Success" {
		return nil, fmt.Errorf("credentials document has Code %q, want \"Success\"", clip(doc.Code, 32))
	}
	return validCredentials(credentialFields{doc.AccessKeyID, doc.SecretAccessKey, doc.Token, doc.Expiration}, now, sourceIMDS)
}

// Region returns the instance's region from IMDS.
func (c *imdsClient) Region(ctx context.Context) (string, error) {
	body, err := c.get(ctx, imdsRegionPath)
	if err != nil {
		return "", fmt.Errorf("discover region: %w", err)
	}
	region := strings.TrimSpace(string(body))
	if region == "" {
		return "", errors.New("discover region: IMDS answered an empty region")
	}
	return region, nil
}
