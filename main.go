// Command s3-helper serves a private S3 bucket to a local nginx as if it
// were a bucket that needs no signature: it takes plain GET and HEAD
// requests on 127.0.0.1, signs them with the instance role's credentials
// (SigV4) and streams S3's answer back with every AWS-specific header
// removed.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// version is reported by -version and in the start-up log.
const version = "0.1.0"

const (
	envPrefix = "S3_HELPER_"
	// Server limits. No WriteTimeout: long range responses are normal.
	// readHeaderTimeout is the default of -read-header-timeout.
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 32 << 10
	// regionTimeout bounds the IMDS region lookup at start-up.
	regionTimeout = 10 * time.Second
	// Upstream connection pool: nginx-vod-module keeps hundreds of ranges
	// in flight per host, so Go's default of 2 idle connections per host
	// would make most requests open a new TLS connection.
	maxIdleConns        = 1024
	maxIdleConnsPerHost = 512
	upstreamIdleTimeout = 90 * time.Second
)

// main runs the daemon until SIGINT or SIGTERM; exit status 2 means bad configuration.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "s3-helper:", err)
		var ce configError
		if errors.As(err, &ce) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// configError lists every invalid-configuration problem; main exits 2.
type configError struct{ problems []error }

// Error lists the problems one a line and points to -help.
func (e configError) Error() string {
	var b strings.Builder
	b.WriteString("invalid configuration:")
	for _, p := range e.problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	b.WriteString("\nrun 's3-helper -help' for every flag, its form and its S3_HELPER_* variable")
	return b.String()
}

// Unwrap returns the problems.
func (e configError) Unwrap() []error { return e.problems }

// routeFlags collects repeatable -route values.
type routeFlags []string

// String joins the routes given so far.
func (r *routeFlags) String() string { return strings.Join(*r, ",") }

// Set adds one -route value; parseRoute checks it later with the rest.
func (r *routeFlags) Set(v string) error { *r = append(*r, v); return nil }

// config is the parsed command line.
type config struct {
	listen           string
	socketMode       string
	allowRemote      bool
	bucket           string
	prefix           string
	region           string
	routes           routeFlags
	endpoint         string
	pathStyle        bool
	credentials      string
	stsEndpoint      string
	assumeRole       string
	externalID       string
	roleSessionName  string
	imdsEndpoint     string
	imdsRole         string
	refreshBefore    time.Duration
	timeout          time.Duration
	retries          int
	newRelicKeyFile  string
	newRelicEndpoint string
	newRelicInterval time.Duration
	statsd           string
	statsdPrefix     string
	statsdTags       string
	admin            string
	pprof            bool
	logLevel         string
	logFormat        string
	accessLog        bool
	shutdownTimeout  time.Duration
	readHeaderWait   time.Duration
	showVersion      bool
	check            bool
	checkKey         string
	presign          string
	presignExpires   time.Duration
	// presignRequested is set when -presign or its variable was given, even
	// empty: an empty -presign is an error, never a silent start.
	presignRequested bool
}

// newFlagSet defines every flag, writing into cfg.
func newFlagSet(cfg *config, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("s3-helper", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:8080", "address to serve on: HOST:PORT, or unix:/PATH for a Unix socket; a non-loopback address needs -allow-remote")
	fs.StringVar(&cfg.socketMode, "socket-mode", "0660", "permissions of the -listen unix: socket, in octal; 0660 lets the socket's group (e.g. www-data for nginx) connect")
	fs.BoolVar(&cfg.allowRemote, "allow-remote", false, "allow -listen and -admin on non-loopback addresses (anyone who reaches the port reads the bucket)")
	fs.StringVar(&cfg.bucket, "bucket", "", "S3 bucket served under / (required)")
	fs.StringVar(&cfg.prefix, "prefix", "", "key prefix prepended to every key of -bucket, e.g. videos/")
	fs.StringVar(&cfg.region, "region", "", "bucket region; default $AWS_REGION, then $AWS_DEFAULT_REGION, then the instance's region from IMDS")
	fs.Var(&cfg.routes, "route", "PATHPREFIX=BUCKET[/KEYPREFIX]: serve another bucket under a URL prefix, e.g. /avod/=ads-bucket; repeatable, longest prefix wins")
	fs.StringVar(&cfg.endpoint, "endpoint", "", "S3 endpoint URL; default https://s3.REGION.amazonaws.com with virtual-hosted addressing")
	fs.BoolVar(&cfg.pathStyle, "path-style", false, "force path-style addressing (automatic for buckets with dots and IP or localhost endpoints)")
	fs.StringVar(&cfg.credentials, "credentials", sourceAuto, "credential source: auto (the AWS SDKs' order: environment keys, web identity, container endpoint, IMDS), or pin one: environment, web-identity, container or imds")
	fs.StringVar(&cfg.stsEndpoint, "sts-endpoint", "", "STS endpoint for web identity and -assume-role; default $AWS_ENDPOINT_URL_STS, then $AWS_ENDPOINT_URL, then https://sts.REGION.amazonaws.com")
	fs.StringVar(&cfg.assumeRole, "assume-role", "", "ARN of a role to assume (e.g. in the bucket's account) with the source's credentials; empty uses the source's own")
	fs.StringVar(&cfg.externalID, "external-id", "", "ExternalId for -assume-role, when the role's trust policy requires one")
	fs.StringVar(&cfg.roleSessionName, "role-session-name", "", "RoleSessionName for -assume-role (2-64 of A-Za-z0-9_+=,.@-); default s3-helper-UNIXTIME")
	fs.StringVar(&cfg.imdsEndpoint, "imds-endpoint", "", "instance metadata endpoint; default $AWS_EC2_METADATA_SERVICE_ENDPOINT, then "+defaultIMDSEndpoint)
	fs.StringVar(&cfg.imdsRole, "imds-role", "", "instance role name; default the first role IMDS lists")
	fs.DurationVar(&cfg.refreshBefore, "refresh-before", defaultRefreshBefore, "refresh credentials at a random moment between this long and two thirds of it before they expire (15m: 15 to 10 minutes before)")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "per upstream attempt: limit to connect and receive S3's response headers, and longest wait on S3 for body bytes (time writing to a slow client does not count)")
	fs.IntVar(&cfg.retries, "retries", 3, "retries of a failed upstream attempt (connect errors, timeouts, 500/502/503/504), and mid-body resumes; 0 disables")
	fs.StringVar(&cfg.newRelicKeyFile, "newrelic-license-key-file", "", "file holding a New Relic license key: push metrics to New Relic's Metric API (default: $NEW_RELIC_LICENSE_KEY; neither disables)")
	fs.StringVar(&cfg.newRelicEndpoint, "newrelic-endpoint", defaultNewRelicEndpoint, "New Relic Metric API URL; EU: https://metric-api.eu.newrelic.com/metric/v1, FedRAMP: https://gov-metric-api.newrelic.com/metric/v1")
	fs.DurationVar(&cfg.newRelicInterval, "newrelic-interval", defaultNewRelicInterval, "how often metrics are pushed to New Relic")
	fs.StringVar(&cfg.statsd, "statsd", "", "statsd HOST:PORT (UDP); empty disables metrics")
	fs.StringVar(&cfg.statsdPrefix, "statsd-prefix", "s3helper", "prefix of every metric name")
	fs.StringVar(&cfg.statsdTags, "statsd-tags", "", "DogStatsD tags added to every metric, k:v,k2:v2; empty sends plain statsd")
	fs.StringVar(&cfg.admin, "admin", "", "admin listener HOST:PORT for /healthz (and /debug/pprof/ with -pprof); empty disables")
	fs.BoolVar(&cfg.pprof, "pprof", false, "serve /debug/pprof/ on the -admin listener")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "text or json (log/slog on stderr)")
	fs.BoolVar(&cfg.accessLog, "access-log", false, "log one line per request (method, key, range, status, upstream status, bytes, duration, attempts)")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may take to finish")
	fs.DurationVar(&cfg.readHeaderWait, "read-header-timeout", readHeaderTimeout, "how long a client may take to send its request headers; slower connections are closed")
	fs.BoolVar(&cfg.showVersion, "version", false, "print the version and exit")
	fs.BoolVar(&cfg.check, "check", false, "check the configuration, credentials, bucket, region, clock and permissions against the real endpoints, print one line per step and exit (1 if any failed)")
	fs.StringVar(&cfg.checkKey, "check-key", "", "with -check: a path nginx would request, e.g. /videos/sample.mp4, to prove s3:GetObject")
	fs.StringVar(&cfg.presign, "presign", "", "print a presigned GET URL for this key of -bucket and exit (debugging)")
	fs.DurationVar(&cfg.presignExpires, "presign-expires", 15*time.Minute, "lifetime of the -presign URL")
	return fs
}

// usageIntro opens -help.
const usageIntro = `s3-helper serves a private S3 bucket to a local nginx as if it were a bucket
that needs no signature: plain GET and HEAD in, SigV4-signed requests to S3
out, with the instance role's credentials.

Usage: s3-helper -bucket NAME [flags]

Every flag can also be set in the environment as S3_HELPER_<FLAG> (upper
case, '-' as '_'), e.g. S3_HELPER_BUCKET=media or S3_HELPER_ROUTE=/a/=b1,/b/=b2;
a flag on the command line wins. Credentials come from the first source
configured, in the AWS SDKs' order: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY;
AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN (IRSA); AWS_CONTAINER_CREDENTIALS_*
(ECS, EKS Pod Identity); else the instance metadata service (IMDSv2).

Flags:
`

// parseConfig parses args, then fills every flag not given on the command
// line from S3_HELPER_<FLAG> (upper case, '-' as '_'): the flag wins. Unlike
// flag.FlagSet.Parse it does not stop at the first problem: it returns the
// config with a configError naming every unknown flag and unparsable value
// with the form expected. -help prints the usage on stdout and returns
// flag.ErrHelp.
func parseConfig(args []string, getenv func(string) string, stdout io.Writer) (*config, error) {
	cfg := &config{}
	fs := newFlagSet(cfg, stdout)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageIntro)
		fs.PrintDefaults()
	}
	given, problems, err := parseArgs(fs, args)
	if err != nil {
		fs.Usage()
		return nil, err
	}
	fs.VisitAll(func(f *flag.Flag) {
		env := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v := getenv(env)
		if given[f.Name] || v == "" {
			return
		}
		values := []string{v}
		if f.Name == "route" {
			values = strings.Split(v, ",")
		}
		for _, one := range values {
			if err := f.Value.Set(strings.TrimSpace(one)); err != nil {
				problems = append(problems, fmt.Errorf("$%s %q: must be %s", env, clip(v, maxQuotedValueBytes), expectedForm(f)))
			}
		}
	})
	cfg.presignRequested = given["presign"] || getenv(envPrefix+"PRESIGN") != ""
	if len(problems) > 0 {
		return cfg, configError{problems}
	}
	return cfg, nil
}

// maxQuotedValueBytes bounds a bad value quoted back in an error.
const maxQuotedValueBytes = 64

// parseArgs sets the flags named in args as flag.FlagSet.Parse does
// (-name value, -name=value, --name, bool flags without a value, "--" ends
// the flags), collecting every problem instead of stopping at the first.
// It returns which flags were given, and flag.ErrHelp for -h or -help.
func parseArgs(fs *flag.FlagSet, args []string) (given map[string]bool, problems []error, err error) {
	given = map[string]bool{}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			for _, rest := range args[i+1:] {
				problems = append(problems, fmt.Errorf("unexpected argument %q: every setting is a flag", clip(rest, maxQuotedValueBytes)))
			}
			break
		}
		name, hasDash := strings.CutPrefix(arg, "-")
		if !hasDash || name == "" {
			problems = append(problems, fmt.Errorf("unexpected argument %q: every setting is a flag", clip(arg, maxQuotedValueBytes)))
			continue
		}
		name = strings.TrimPrefix(name, "-")
		name, value, hasValue := strings.Cut(name, "=")
		if name == "h" || name == "help" {
			return nil, nil, flag.ErrHelp
		}
		f := fs.Lookup(name)
		if f == nil {
			problems = append(problems, fmt.Errorf("unknown flag -%s", clip(name, maxQuotedValueBytes)))
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() && !hasValue {
			value, hasValue = "true", true
		}
		if !hasValue {
			if i+1 == len(args) {
				problems = append(problems, fmt.Errorf("-%s needs a value: %s", name, expectedForm(f)))
				continue
			}
			i++
			value = args[i]
		}
		given[name] = true
		if err := f.Value.Set(value); err != nil {
			problems = append(problems, fmt.Errorf("-%s %q: must be %s", name, clip(value, maxQuotedValueBytes), expectedForm(f)))
		}
	}
	return given, problems, nil
}

// expectedForm describes the values a flag takes, for error messages.
func expectedForm(f *flag.Flag) string {
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			return "a duration such as 5s, 250ms or 1m30s"
		case int:
			return "a whole number such as 3"
		case bool:
			return "true or false"
		}
	}
	return "a value as -help describes"
}

// settings is the validated configuration, ready to wire.
type settings struct {
	cfg          *config
	listenNet    string
	listenAddr   string
	socketMode   os.FileMode
	endpoint     *url.URL
	routes       []routeSpec
	logLevel     slog.Level
	imdsEndpoint string
	// source is the chosen credential source; static is its set when it is
	// the environment.
	source sourceChoice
	static *Credentials
	// stsEndpoint is -sts-endpoint or its variables; nil means the
	// regional endpoint.
	stsEndpoint *url.URL
	// newRelicKey is the New Relic license key (a secret); empty disables
	// the push.
	newRelicKey string
}

// routeSpec is a route before the endpoint (and so the host) is known.
type routeSpec struct {
	pathPrefix, bucket, keyPrefix string
}

// validate checks everything that needs no network and reports every
// problem at once, each naming the flag, the value and the rule.
func validate(cfg *config, getenv func(string) string) (*settings, error) {
	s := &settings{cfg: cfg}
	var errs []error
	bad := func(flagName, value, rule string) {
		errs = append(errs, fmt.Errorf("-%s %q: %s", flagName, value, rule))
	}

	s.listenNet, s.listenAddr = "tcp", cfg.listen
	if path, ok := strings.CutPrefix(cfg.listen, "unix:"); ok {
		s.listenNet, s.listenAddr = "unix", path
		if path == "" {
			bad("listen", cfg.listen, "unix: needs a socket path")
		}
		mode, err := strconv.ParseUint(cfg.socketMode, 8, 32)
		if err != nil || mode > 0o777 {
			bad("socket-mode", cfg.socketMode, "must be octal permissions such as 0660")
		}
		s.socketMode = os.FileMode(mode)
	} else if err := checkListenAddr(cfg.listen, cfg.allowRemote); err != nil {
		bad("listen", cfg.listen, err.Error())
	}
	if cfg.admin != "" {
		if err := checkListenAddr(cfg.admin, cfg.allowRemote); err != nil {
			bad("admin", cfg.admin, err.Error())
		}
	}
	if cfg.pprof && cfg.admin == "" {
		bad("pprof", "true", "needs -admin: profiles are never served on the proxy port")
	}

	if cfg.bucket == "" {
		bad("bucket", "", "required")
	} else if err := checkBucket(cfg.bucket); err != nil {
		bad("bucket", cfg.bucket, err.Error())
	}
	if err := checkKeyPrefix(cfg.prefix); err != nil {
		bad("prefix", cfg.prefix, err.Error())
	}
	s.routes = append(s.routes, routeSpec{"/", cfg.bucket, cfg.prefix})
	seen := map[string]bool{"/": true}
	for _, r := range cfg.routes {
		spec, err := parseRoute(r)
		switch {
		case err != nil:
			bad("route", r, err.Error())
		case seen[spec.pathPrefix]:
			bad("route", r, "path prefix "+spec.pathPrefix+" is already routed")
		default:
			seen[spec.pathPrefix] = true
			s.routes = append(s.routes, spec)
		}
	}

	if cfg.region == "" {
		cfg.region = firstNonEmpty(getenv("AWS_REGION"), getenv("AWS_DEFAULT_REGION"))
	}
	if cfg.region != "" && !isRegionName(cfg.region) {
		bad("region", cfg.region, "must look like us-east-1 (lower-case letters, digits and '-')")
	}
	if cfg.endpoint != "" {
		u, err := parseEndpoint(cfg.endpoint)
		if err != nil {
			bad("endpoint", cfg.endpoint, err.Error())
		}
		s.endpoint = u
	}

	s.imdsEndpoint = firstNonEmpty(cfg.imdsEndpoint, getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT"), defaultIMDSEndpoint)
	if u, err := url.Parse(s.imdsEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("imds-endpoint", s.imdsEndpoint, "must be an http:// or https:// URL with a host")
	}
	s.imdsEndpoint = strings.TrimRight(s.imdsEndpoint, "/")
	if cfg.refreshBefore < time.Second || cfg.refreshBefore > time.Hour {
		bad("refresh-before", cfg.refreshBefore.String(), "must be between 1s and 1h")
	}
	if cfg.timeout < 100*time.Millisecond || cfg.timeout > 5*time.Minute {
		bad("timeout", cfg.timeout.String(), "must be between 100ms and 5m")
	}
	if cfg.retries < 0 || cfg.retries > 10 {
		bad("retries", strconv.Itoa(cfg.retries), "must be between 0 and 10")
	}
	if cfg.statsd != "" {
		if _, _, err := net.SplitHostPort(cfg.statsd); err != nil {
			bad("statsd", cfg.statsd, "must be HOST:PORT")
		}
	}
	if strings.ContainsAny(cfg.statsdPrefix, ":|@# \n") {
		bad("statsd-prefix", cfg.statsdPrefix, "must not contain ':', '|', '@', '#' or spaces")
	}
	if cfg.statsdTags != "" && strings.ContainsAny(cfg.statsdTags, "|@# \n") {
		bad("statsd-tags", cfg.statsdTags, "must be k:v,k2:v2 without '|', '@', '#' or spaces")
	}
	if err := s.logLevel.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		bad("log-level", cfg.logLevel, "must be debug, info, warn or error")
	}
	if cfg.logFormat != "text" && cfg.logFormat != "json" {
		bad("log-format", cfg.logFormat, "must be text or json")
	}
	if cfg.readHeaderWait < 10*time.Millisecond || cfg.readHeaderWait > 5*time.Minute {
		bad("read-header-timeout", cfg.readHeaderWait.String(), "must be between 10ms and 5m")
	}
	if cfg.shutdownTimeout < 0 {
		bad("shutdown-timeout", cfg.shutdownTimeout.String(), "must not be negative")
	}
	if cfg.presignRequested {
		// The same key rules as the proxy, so a printed URL names an object
		// the proxy would also serve.
		if err := checkPresignKey(cfg.prefix, cfg.presign); err != nil {
			bad("presign", clip(cfg.presign, maxQuotedValueBytes), err.Error())
		}
		if cfg.presignExpires < time.Second || cfg.presignExpires > maxPresignExpiry {
			bad("presign-expires", cfg.presignExpires.String(), "must be between 1s and 168h (7 days, S3's limit)")
		}
	}

	errs = append(errs, validateCredentialSource(s, cfg, getenv)...)
	errs = append(errs, validateNewRelic(s, cfg, getenv)...)
	if len(errs) > 0 {
		return nil, configError{errs}
	}
	return s, nil
}

// validateCredentialSource chooses the credential source and checks what it
// and -assume-role need, without touching the network.
func validateCredentialSource(s *settings, cfg *config, getenv func(string) string) []error {
	var errs []error
	bad := func(flagName, value, rule string) {
		errs = append(errs, fmt.Errorf("-%s %q: %s", flagName, clip(value, maxQuotedValueBytes), rule))
	}
	akid, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
	if (akid == "") != (secret == "") {
		errs = append(errs, errors.New("$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY: set both or neither"))
	}
	choice, err := chooseSource(cfg.credentials, getenv)
	if err != nil {
		bad("credentials", cfg.credentials, err.Error())
	}
	s.source = choice
	switch choice.name {
	case sourceEnvironment:
		s.static = newCredentials(akid, secret, getenv("AWS_SESSION_TOKEN"), time.Time{}, sourceEnvironment)
	case sourceWebIdentity:
		if !isRoleARN(getenv("AWS_ROLE_ARN")) {
			errs = append(errs, fmt.Errorf("$AWS_ROLE_ARN %q: must be a role ARN such as arn:aws:iam::123456789012:role/NAME", clip(getenv("AWS_ROLE_ARN"), maxQuotedValueBytes)))
		}
		if n := getenv("AWS_ROLE_SESSION_NAME"); n != "" && !validSessionName(n) {
			errs = append(errs, fmt.Errorf("$AWS_ROLE_SESSION_NAME %q: must be 2 to 64 of A-Za-z0-9_+=,.@-", clip(n, maxQuotedValueBytes)))
		}
	case sourceContainer:
		if getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") == "" {
			if err := checkContainerURL(getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")); err != nil {
				errs = append(errs, fmt.Errorf("$AWS_CONTAINER_CREDENTIALS_FULL_URI %q: %w", clip(getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI"), maxQuotedValueBytes), err))
			}
		}
		if strings.ContainsAny(getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN"), "\r\n") {
			errs = append(errs, errors.New("$AWS_CONTAINER_AUTHORIZATION_TOKEN: contains a line break"))
		}
	}
	if cfg.assumeRole != "" && !isRoleARN(cfg.assumeRole) {
		bad("assume-role", cfg.assumeRole, "must be a role ARN such as arn:aws:iam::123456789012:role/NAME")
	}
	if cfg.roleSessionName != "" && !validSessionName(cfg.roleSessionName) {
		bad("role-session-name", cfg.roleSessionName, "must be 2 to 64 of A-Za-z0-9_+=,.@-")
	}
	if cfg.externalID != "" && (len(cfg.externalID) < 2 || len(cfg.externalID) > 1224 || strings.ContainsAny(cfg.externalID, " \t\r\n")) {
		bad("external-id", cfg.externalID, "must be 2 to 1224 characters without spaces")
	}
	if (cfg.externalID != "" || cfg.roleSessionName != "") && cfg.assumeRole == "" {
		bad("assume-role", "", "needed by -external-id and -role-session-name")
	}
	if v := firstNonEmpty(cfg.stsEndpoint, getenv("AWS_ENDPOINT_URL_STS"), getenv("AWS_ENDPOINT_URL")); v != "" {
		u, err := parseEndpoint(v)
		if err != nil {
			bad("sts-endpoint", v, err.Error())
		}
		s.stsEndpoint = u
	}
	return errs
}

// validateNewRelic reads the license key (file first, then
// $NEW_RELIC_LICENSE_KEY) and checks the push settings. No error quotes the
// key.
func validateNewRelic(s *settings, cfg *config, getenv func(string) string) []error {
	var errs []error
	s.newRelicKey = getenv("NEW_RELIC_LICENSE_KEY")
	if cfg.newRelicKeyFile != "" {
		key, err := readTokenFile(cfg.newRelicKeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("-newrelic-license-key-file: %w", err))
		}
		s.newRelicKey = key
	}
	for _, c := range s.newRelicKey {
		if c <= ' ' || c > '~' {
			errs = append(errs, errors.New("New Relic license key: must be printable ASCII without spaces"))
			break
		}
	}
	if u, err := url.Parse(cfg.newRelicEndpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		errs = append(errs, fmt.Errorf("-newrelic-endpoint %q: must be an https:// URL", clip(cfg.newRelicEndpoint, maxQuotedValueBytes)))
	}
	if cfg.newRelicInterval < time.Second || cfg.newRelicInterval > 10*time.Minute {
		errs = append(errs, fmt.Errorf("-newrelic-interval %q: must be between 1s and 10m", cfg.newRelicInterval))
	}
	return errs
}

// isRoleARN reports whether v looks like an IAM role ARN.
func isRoleARN(v string) bool {
	rest, ok := strings.CutPrefix(v, "arn:")
	return ok && strings.Contains(rest, ":iam::") && strings.Contains(rest, ":role/") && len(v) <= 2048
}

// checkPresignKey applies the proxy's key rules to a -presign key.
func checkPresignKey(prefix, key string) error {
	if key == "" {
		return errors.New("needs an object key")
	}
	if err := checkClientKey(key); err != nil {
		return err
	}
	return validateKey(prefix + key)
}

// firstNonEmpty returns the first non-empty value, or "".
func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// checkListenAddr requires HOST:PORT on a loopback host unless allowRemote.
func checkListenAddr(addr string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("must be HOST:PORT or unix:/PATH")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("port must be a number from 0 to 65535")
	}
	if allowRemote || isLoopbackHost(host) {
		return nil
	}
	return errors.New("not a loopback address; add -allow-remote to serve other hosts")
}

// isLoopbackHost reports whether host is localhost or a loopback IP (127.0.0.0/8, ::1).
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkBucket applies S3's bucket naming rules, loosely enough for legacy
// us-east-1 names (upper case, '_'), which then use path style.
func checkBucket(b string) error {
	if len(b) < 3 || len(b) > 255 {
		return errors.New("must be 3 to 255 characters")
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return errors.New("may contain only letters, digits, '-', '.' and '_'")
		}
	}
	return nil
}

// dnsCompatibleBucket reports whether b can be a host name label.
func dnsCompatibleBucket(b string) bool {
	if len(b) > 63 || b[0] == '-' || b[len(b)-1] == '-' {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// checkKeyPrefix applies the client-key rules to a configured key prefix.
func checkKeyPrefix(p string) error {
	if p == "" {
		return nil
	}
	if strings.HasPrefix(p, "/") {
		return errors.New("must not start with '/': it is part of the object key")
	}
	return checkClientKey(p)
}

// parseRoute parses PATHPREFIX=BUCKET[/KEYPREFIX].
func parseRoute(v string) (routeSpec, error) {
	prefix, target, ok := strings.Cut(v, "=")
	if !ok || prefix == "" || target == "" {
		return routeSpec{}, errors.New("must be PATHPREFIX=BUCKET[/KEYPREFIX]")
	}
	if !strings.HasPrefix(prefix, "/") || prefix == "/" {
		return routeSpec{}, errors.New("path prefix must start with '/' and not be '/' (that is -bucket)")
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if err := checkClientKey(strings.Trim(prefix, "/")); err != nil {
		return routeSpec{}, fmt.Errorf("path prefix: %w", err)
	}
	bucket, keyPrefix, _ := strings.Cut(target, "/")
	if err := checkBucket(bucket); err != nil {
		return routeSpec{}, fmt.Errorf("bucket %q: %w", bucket, err)
	}
	if err := checkKeyPrefix(keyPrefix); err != nil {
		return routeSpec{}, fmt.Errorf("key prefix %q: %w", keyPrefix, err)
	}
	return routeSpec{prefix, bucket, keyPrefix}, nil
}

// isRegionName reports whether r looks like an AWS region name.
func isRegionName(r string) bool {
	for i := 0; i < len(r); i++ {
		c := r[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return r != "" && len(r) <= 32
}

// parseEndpoint accepts http(s)://HOST[:PORT] with no path, query or user,
// and drops a default port so the signed Host matches what S3 sees.
func parseEndpoint(v string) (*url.URL, error) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("must be an http:// or https:// URL with a host")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, errors.New("must have no path, query or user info")
	}
	host := u.Host
	if h, port, err := net.SplitHostPort(host); err == nil &&
		(u.Scheme == "https" && port == "443" || u.Scheme == "http" && port == "80") {
		host = h
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	}
	return &url.URL{Scheme: u.Scheme, Host: host}, nil
}

// buildRoutes resolves each route's host and addressing style, longest
// path prefix first.
func buildRoutes(specs []routeSpec, endpoint *url.URL, forcePath bool) []route {
	endpointHost := endpoint.Hostname()
	literalHost := endpointHost == "localhost" || net.ParseIP(endpointHost) != nil
	routes := make([]route, 0, len(specs))
	for _, sp := range specs {
		r := route{pathPrefix: sp.pathPrefix, bucket: sp.bucket, keyPrefix: sp.keyPrefix}
		// Dots break the TLS wildcard *.s3.REGION.amazonaws.com; an IP or
		// localhost endpoint cannot carry a bucket label.
		if forcePath || literalHost || strings.Contains(sp.bucket, ".") || !dnsCompatibleBucket(sp.bucket) {
			r.host = endpoint.Host
			r.uriPrefix = string(appendURIEncoded([]byte{'/'}, sp.bucket, false))
		} else {
			r.host = sp.bucket + "." + endpoint.Host
		}
		routes = append(routes, r)
	}
	sort.SliceStable(routes, func(i, j int) bool { return len(routes[i].pathPrefix) > len(routes[j].pathPrefix) })
	return routes
}

// newLogger returns a slog logger in the -log-format on w.
func newLogger(w io.Writer, format string, level slog.Leveler) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// newUpstreamTransport is the one keep-alive Transport all S3 requests share.
func newUpstreamTransport(timeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 nil, // S3 is reached directly; a stray HTTPS_PROXY must not see signed requests
		DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		MaxIdleConns:          maxIdleConns,
		MaxIdleConnsPerHost:   maxIdleConnsPerHost,
		IdleConnTimeout:       upstreamIdleTimeout,
		// Otherwise net/http adds Accept-Encoding: gzip to non-Range GETs
		// and silently decodes the body, changing its length.
		DisableCompression: true,
	}
}

// run is main without the process: it parses args, validates, wires and
// serves until ctx ends, then drains in-flight requests.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout)
	var parseProblems configError
	if err != nil && !errors.As(err, &parseProblems) {
		return err
	}
	if cfg.showVersion && err == nil {
		fmt.Fprintln(stdout, "s3-helper", versionString())
		return nil
	}
	st, err := validate(cfg, getenv)
	var problems configError
	if err != nil && !errors.As(err, &problems) {
		return err
	}
	all := append(parseProblems.problems, problems.problems...)
	if cfg.check {
		return runCheck(ctx, stdout, cfg, st, all, getenv)
	}
	if len(all) > 0 {
		return configError{all}
	}
	var level slog.LevelVar
	level.Set(st.logLevel)
	log := newLogger(stderr, cfg.logFormat, &level)

	if cfg.region == "" {
		rctx, cancel := context.WithTimeout(ctx, regionTimeout)
		cfg.region, err = (&imdsClient{endpoint: st.imdsEndpoint}).Region(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("no -region, $AWS_REGION or $AWS_DEFAULT_REGION, and %w", err)
		}
	}
	if st.endpoint == nil {
		st.endpoint = defaultEndpoint(cfg.region)
	}

	var statsd *statsdEmitter
	if cfg.statsd != "" {
		conn, err := net.Dial("udp", cfg.statsd)
		if err != nil {
			return fmt.Errorf("-statsd %q: %w", cfg.statsd, err)
		}
		statsd = newStatsdEmitter(conn, cfg.statsdPrefix, cfg.statsdTags, 0)
	}
	// Prometheus is served with -admin; statsd and New Relic push.
	metrics := newMetrics(statsd, cfg.admin != "" || st.newRelicKey != "")
	defer metrics.Close()
	if st.newRelicKey != "" {
		host, _ := os.Hostname()
		nr := &newRelicPusher{metrics: metrics, endpoint: cfg.newRelicEndpoint, key: st.newRelicKey, interval: cfg.newRelicInterval,
			attributes: map[string]any{"service.name": "s3-helper", "host.name": host, "instance": cfg.listen, "service.version": version},
			log:        log.With("component", "newrelic")}
		nr.start()
		defer nr.close()
		metrics.Gauge("", "newrelic_dropped_payloads_total", "New Relic payloads dropped: rejected, or pushed out while New Relic was unreachable.", nr.dropped.Load)
	}

	caches := newCredentialCaches(st, getenv, log.With("component", "credentials"), metrics)
	for _, c := range caches {
		c.Start(ctx)
		defer c.Close()
	}
	cache := caches[len(caches)-1] // the one that signs S3 requests

	signer := &Signer{Region: cfg.region}
	routes := buildRoutes(st.routes, st.endpoint, cfg.pathStyle)
	if cfg.presignRequested {
		return presign(ctx, stdout, signer, cache, routes, st.endpoint.Scheme, cfg)
	}

	proxy := &Proxy{
		routes: routes, scheme: st.endpoint.Scheme, signer: signer, creds: cache,
		transport: newUpstreamTransport(cfg.timeout), metrics: metrics, log: log,
		accessLog: cfg.accessLog, retries: cfg.retries, bodyTimeout: cfg.timeout,
	}
	metrics.Gauge(metricInFlight, "requests_in_flight", "Requests being served.", proxy.InFlight)
	metrics.Gauge(metricCredentialTTL, "credential_expiry_seconds", "Seconds until the credentials in use expire (0: they never do).", func() int64 {
		return int64(cache.Status(time.Now()).ExpiresIn / time.Second)
	})
	metrics.Gauge(metricClockOffset, "clock_offset_seconds", "Seconds added to this host's clock when signing, learned from S3's Date header (0: the clock is right).", func() int64 {
		return int64(proxy.clockFix.Offset(time.Now()) / time.Second)
	})
	if statsd != nil {
		metrics.Gauge("", "statsd_dropped_lines_total", "statsd lines dropped because the socket or the queue was full.", statsd.Dropped)
	}
	return serve(ctx, st, proxy, cache, metrics, log)
}

// defaultEndpoint is S3's regional endpoint.
func defaultEndpoint(region string) *url.URL {
	return &url.URL{Scheme: "https", Host: "s3." + region + ".amazonaws.com"}
}

// newCredentialCaches builds the chosen source behind a cache and, with
// -assume-role, the assumed role behind a second cache on top of it. The
// last cache returned is the one that signs S3 requests.
func newCredentialCaches(st *settings, getenv func(string) string, log *slog.Logger, metrics *Metrics) []*credentialCache {
	cfg := st.cfg
	newCache := func(p credentialProvider) *credentialCache {
		return &credentialCache{provider: p, refreshBefore: cfg.refreshBefore, log: log, metrics: metrics}
	}
	sts := &stsClient{endpoint: "https://sts." + cfg.region + ".amazonaws.com"}
	if st.stsEndpoint != nil {
		sts.endpoint = st.stsEndpoint.String()
	}
	var base credentialProvider
	switch st.source.name {
	case sourceEnvironment:
		base = staticProvider{st.static}
	case sourceWebIdentity:
		base = &webIdentityProvider{sts: sts, roleARN: getenv("AWS_ROLE_ARN"), tokenFile: getenv("AWS_WEB_IDENTITY_TOKEN_FILE"),
			sessionName: firstNonEmpty(getenv("AWS_ROLE_SESSION_NAME"), defaultSessionName(time.Now()))}
	case sourceContainer:
		u := getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")
		if rel := getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"); rel != "" {
			u = containerHost + rel
		}
		base = &containerProvider{url: u, authTokenFile: getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
			authToken: getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN")}
	default:
		base = &imdsClient{endpoint: st.imdsEndpoint, role: cfg.imdsRole}
	}
	caches := []*credentialCache{newCache(base)}
	if cfg.assumeRole != "" {
		caches = append(caches, newCache(&assumeRoleProvider{sts: sts, base: caches[0],
			signer: &Signer{Region: cfg.region, Service: serviceSTS}, roleARN: cfg.assumeRole, externalID: cfg.externalID,
			sessionName: firstNonEmpty(cfg.roleSessionName, defaultSessionName(time.Now()))}))
	}
	return caches
}

// serve listens (failing fast on bind errors), serves until ctx ends, then
// drains in-flight requests for up to -shutdown-timeout.
func serve(ctx context.Context, st *settings, proxy *Proxy, cache *credentialCache, metrics *Metrics, log *slog.Logger) error {
	cfg := st.cfg
	if st.listenNet == "unix" {
		removeStaleSocket(st.listenAddr)
	}
	ln, err := net.Listen(st.listenNet, st.listenAddr)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", cfg.listen, err)
	}
	if st.listenNet == "unix" {
		// The umask would leave the socket writable by its owner only, and
		// nginx (www-data) could not connect.
		if err := os.Chmod(st.listenAddr, st.socketMode); err != nil {
			ln.Close()
			return fmt.Errorf("-socket-mode %s: %w", cfg.socketMode, err)
		}
	}
	errorLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	srv := &http.Server{
		Handler:           proxy,
		ReadHeaderTimeout: cfg.readHeaderWait,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          errorLog,
	}
	servers := []serving{{"proxy", srv, ln}}
	if cfg.admin != "" {
		aln, err := net.Listen("tcp", cfg.admin)
		if err != nil {
			ln.Close()
			return fmt.Errorf("-admin %q: %w", cfg.admin, err)
		}
		admin := &http.Server{Handler: adminHandler(cache, metrics, credentialSourceName(st), cfg.pprof), ReadHeaderTimeout: readHeaderTimeout, ErrorLog: errorLog}
		servers = append(servers, serving{"admin", admin, aln})
		log.Info("admin listening", "addr", aln.Addr().String(), "pprof", cfg.pprof)
	}
	if !isLoopbackListener(ln.Addr()) {
		log.Warn("listening on a non-loopback address: anyone who can reach it can read the bucket", "addr", ln.Addr().String())
	}
	log.Info("listening", "addr", ln.Addr().String(), "version", version, "region", cfg.region,
		"endpoint", st.endpoint.String(), "bucket", cfg.bucket, "routes", len(proxy.routes),
		"credentials", credentialSourceName(st), "statsd", cfg.statsd != "", "newrelic", st.newRelicKey != "")
	return runServers(ctx, servers, cfg.shutdownTimeout, log, proxy.InFlight)
}

// serving is one server and the listener it serves.
type serving struct {
	name string
	srv  *http.Server
	ln   net.Listener
}

// runServers serves every listener until ctx ends or one server fails,
// then shuts them all down, draining in-flight requests for up to
// shutdownTimeout. A failed server is an error, so the process exits
// non-zero instead of running on half its listeners.
func runServers(ctx context.Context, servers []serving, shutdownTimeout time.Duration, log *slog.Logger, inFlight func() int64) error {
	errc := make(chan error, len(servers))
	var serveLoops sync.WaitGroup
	for _, s := range servers {
		serveLoops.Go(func() {
			if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s server on %s: %w", s.name, s.ln.Addr(), err)
			}
		})
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		log.Error("a server failed; stopping the others", "err", serveErr)
	}
	log.Info("shutting down", "in_flight", inFlight(), "timeout", shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	var shutdownErr error
	for _, s := range servers {
		if err := s.srv.Shutdown(sctx); err != nil {
			shutdownErr = fmt.Errorf("shutdown: %w (requests still in flight were cut off)", err)
			s.srv.Close()
		}
	}
	serveLoops.Wait() // every listener is closed once its Serve returns
	log.Info("stopped")
	return errors.Join(serveErr, shutdownErr)
}

// credentialSourceName names the credential source and why it was chosen,
// for the start-up log and /healthz; never a value.
func credentialSourceName(st *settings) string {
	name := st.source.name
	if name == sourceIMDS {
		name += " " + st.imdsEndpoint
	}
	if st.cfg.assumeRole != "" {
		name = sourceAssumeRole + " " + st.cfg.assumeRole + " with " + name
	}
	return name + " (" + st.source.reason + ")"
}

// isLoopbackListener reports whether a listener only accepts local connections.
func isLoopbackListener(a net.Addr) bool {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.IsLoopback()
	}
	return true // Unix sockets are local by nature
}

// removeStaleSocket removes a socket file left by a previous run; it never
// removes anything that is not a socket.
func removeStaleSocket(path string) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
}

// adminHandler serves /healthz, /metrics (Prometheus) and, with withPprof,
// /debug/pprof/.
func adminHandler(cache *credentialCache, metrics *Metrics, source string, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	if metrics != nil && metrics.agg != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := cache.Status(time.Now())
		ok, reason := st.Healthy()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "unhealthy:", reason)
		} else {
			fmt.Fprintln(w, "ok:", reason)
		}
		fmt.Fprintf(w, "source=%s access_key_id=%s age=%s expires_in=%s extended=%t refreshes=%d failures=%d\n",
			st.Source, st.AccessKeyID, st.Age.Round(time.Second), expiresText(st.ExpiresIn), st.Extended, st.Refreshes, st.Failures)
		fmt.Fprintf(w, "credentials: %s\n", source)
	})
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// presign prints a presigned URL for cfg.presign in the default route.
func presign(ctx context.Context, stdout io.Writer, signer *Signer, cache *credentialCache, routes []route, scheme string, cfg *config) error {
	var rt route
	for _, r := range routes {
		if r.pathPrefix == "/" {
			rt = r
		}
	}
	now := time.Now()
	wctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	creds, err := cache.Get(wctx, now)
	cancel()
	if err != nil {
		return fmt.Errorf("presign: %w", err)
	}
	uri := rt.uriPrefix + canonicalURI(rt.keyPrefix+cfg.presign)
	query, err := signer.Presign(signingRequest{method: http.MethodGet, host: rt.host, uri: uri}, creds, now, cfg.presignExpires)
	if err != nil {
		return fmt.Errorf("presign: %w", err)
	}
	fmt.Fprintf(stdout, "%s://%s%s?%s\n", scheme, rt.host, uri, query)
	return nil
}

// versionString adds the VCS revision when the binary was built from a
// checkout.
func versionString() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return version + " (" + s.Value[:12] + ")"
		}
	}
	return version
}
