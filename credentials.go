package main

// Credentials: the credential set type, which redacts itself everywhere, the
// validation every fetched set passes before it is cached, the interfaces
// between sources, the cache and its readers, and the choice of source in
// the AWS SDKs' order. cache.go holds the cache; sources.go and imds.go the
// sources.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

const (
	// Source names, in the AWS SDKs' order; each is also a -credentials value.
	sourceEnvironment = "environment"
	sourceWebIdentity = "web-identity"
	sourceContainer   = "container"
	sourceIMDS        = "imds"
	// sourceAssumeRole marks sets from -assume-role, on top of any source.
	sourceAssumeRole = "assume-role"
	// sourceAuto lets the environment choose, as the SDKs do.
	sourceAuto = "auto"
)

// sourceChoice is the credential source in use and why it was chosen: the
// variables seen, never their values.
type sourceChoice struct {
	name   string
	reason string
}

// chooseSource applies the AWS SDKs' order (environment keys, web identity,
// container endpoint, IMDS): the first source whose variables are set wins,
// and its failures are reported, never silently replaced by the next. pin,
// unless it is "auto" or empty, selects one source, which must then be
// configured.
func chooseSource(pin string, getenv func(string) string) (sourceChoice, error) {
	set := func(names ...string) bool {
		for _, n := range names {
			if getenv(n) == "" {
				return false
			}
		}
		return true
	}
	var candidates []sourceChoice
	if set("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") {
		candidates = append(candidates, sourceChoice{sourceEnvironment, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set"})
	}
	if set("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN") {
		candidates = append(candidates, sourceChoice{sourceWebIdentity, "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN are set"})
	}
	switch {
	case set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
		candidates = append(candidates, sourceChoice{sourceContainer, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is set"})
	case set("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
		candidates = append(candidates, sourceChoice{sourceContainer, "AWS_CONTAINER_CREDENTIALS_FULL_URI is set"})
	}
	candidates = append(candidates, sourceChoice{sourceIMDS, "no other source is configured"})
	if pin == "" || pin == sourceAuto {
		return candidates[0], nil
	}
	for _, c := range candidates {
		if c.name == pin {
			c.reason = "pinned by -credentials; " + c.reason
			if pin == sourceIMDS {
				c.reason = "pinned by -credentials"
			}
			return c, nil
		}
	}
	switch pin {
	case sourceEnvironment:
		return sourceChoice{}, errors.New("environment: needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	case sourceWebIdentity:
		return sourceChoice{}, errors.New("web-identity: needs AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN")
	case sourceContainer:
		return sourceChoice{}, errors.New("container: needs AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or AWS_CONTAINER_CREDENTIALS_FULL_URI")
	}
	return sourceChoice{}, errors.New("must be auto, environment, web-identity, container or imds")
}

// errCredentialsUnavailable is wrapped when no usable credentials exist; the
// proxy maps it to 503.
var errCredentialsUnavailable = errors.New("credentials unavailable")

// Credentials is one AWS credential set. It is immutable once built by
// newCredentials. It redacts its secrets in every fmt verb, in slog and in
// JSON, so that no code path can print them by accident.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// Expires is when S3 stops accepting the set; zero means never.
	Expires time.Time
	// Source names where the set came from: sourceEnvironment,
	// sourceWebIdentity, sourceContainer, sourceIMDS or sourceAssumeRole.
	Source string

	// tokenValues is the X-Amz-Security-Token header value, built once.
	tokenValues []string
}

// newCredentials returns a credential set with its header value prebuilt.
func newCredentials(accessKeyID, secret, token string, expires time.Time, source string) *Credentials {
	c := &Credentials{AccessKeyID: accessKeyID, SecretAccessKey: secret, SessionToken: token, Expires: expires, Source: source}
	if token != "" {
		c.tokenValues = []string{token}
	}
	return c
}

// tokenHeader returns the X-Amz-Security-Token header value. Callers must
// not modify it.
func (c *Credentials) tokenHeader() []string {
	if c.tokenValues == nil {
		return []string{c.SessionToken}
	}
	return c.tokenValues
}

// String returns the set without its secret key and session token.
func (c Credentials) String() string {
	var b strings.Builder
	b.WriteString("Credentials{AccessKeyID: ")
	b.WriteString(c.AccessKeyID)
	b.WriteString(", SecretAccessKey: REDACTED")
	if c.SessionToken != "" {
		b.WriteString(", SessionToken: REDACTED")
	}
	if !c.Expires.IsZero() {
		b.WriteString(", Expires: ")
		b.WriteString(c.Expires.UTC().Format(time.RFC3339))
	}
	b.WriteString(", Source: ")
	b.WriteString(c.Source)
	b.WriteString("}")
	return b.String()
}

// GoString redacts like String, for %#v.
func (c Credentials) GoString() string { return c.String() }

// Format redacts in every verb, including %d and %x, which would otherwise
// print the fields raw.
func (c Credentials) Format(f fmt.State, _ rune) { io.WriteString(f, c.String()) }

// LogValue redacts for log/slog.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("access_key_id", c.AccessKeyID),
		slog.String("source", c.Source),
		slog.Time("expires", c.Expires),
	)
}

// MarshalJSON redacts for encoding/json.
func (c Credentials) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }

// credentialFields are a credential document's four values as every source
// serves them (IMDS, the container endpoint and STS name them alike).
type credentialFields struct {
	accessKeyID, secretAccessKey, sessionToken, expiration string
}

// validCredentials checks a fetched document before it may be cached: all
// three secrets present and Expiration an RFC 3339 time in the future. Its
// errors name fields, never their secret values.
func validCredentials(f credentialFields, now time.Time, source string) (*Credentials, error) {
	var missing []string
	for _, field := range []struct{ name, value string }{
		{"AccessKeyId", f.accessKeyID}, {"SecretAccessKey", f.secretAccessKey},
		{"Token", f.sessionToken}, {"Expiration", f.expiration},
	} {
		if field.value == "" {
			missing = append(missing, field.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("credentials document lacks %s", strings.Join(missing, ", "))
	}
	expires, err := time.Parse(time.RFC3339, f.expiration)
	if err != nil {
		return nil, fmt.Errorf("credentials Expiration %q is not an RFC 3339 time", clip(f.expiration, 40))
	}
	if !expires.After(now) {
		return nil, fmt.Errorf("credentials expired at %s", expires.UTC().Format(time.RFC3339))
	}
	return newCredentials(f.accessKeyID, f.secretAccessKey, f.sessionToken, expires, source), nil
}

// credentialGetter returns usable credentials without blocking while they
// are cached; see credentialCache.Get.
type credentialGetter interface {
	Get(ctx context.Context, now time.Time) (*Credentials, error)
	// Refresh fetches a new set after S3 rejected dead; see
	// credentialCache.Refresh.
	Refresh(ctx context.Context, dead *Credentials) (*Credentials, error)
}

// credentialProvider fetches a fresh credential set.
type credentialProvider interface {
	Retrieve(ctx context.Context) (*Credentials, error)
}

// staticProvider serves fixed credentials, e.g. from AWS_ACCESS_KEY_ID.
type staticProvider struct{ creds *Credentials }

// Retrieve returns the fixed set.
func (p staticProvider) Retrieve(context.Context) (*Credentials, error) { return p.creds, nil }
