package main

// The configuration: one type holding the flags as given (flags.go parses
// them) and what resolve derives from them and the environment, validated
// by concern with every problem reported at once; and the parts built from
// it (credential caches, the upstream transport) for both the daemon and
// -check.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	// envPrefix starts every flag's environment variable.
	envPrefix = "S3_HELPER_"
	// readHeaderTimeout is the default of -read-header-timeout.
	readHeaderTimeout = 10 * time.Second
	// regionTimeout bounds the IMDS region lookup at start-up.
	regionTimeout = 10 * time.Second
)

// config is the whole configuration: the flags as given (parseConfig sets
// them) and what resolve derives from them and the environment.
type config struct {
	listen          string
	socketMode      string
	allowRemote     bool
	bucket          string
	prefix          string
	region          string
	routes          []string // every -route, unparsed
	replicas        []string // every -replica, unparsed
	regionEndpoints []string // every -region-endpoint, unparsed
	endpoint        string
	pathStyle       bool
	credentials     string
	stsEndpoint     string
	assumeRole      string
	externalID      string
	roleSessionName string
	imdsEndpoint    string
	imdsRole        string
	refreshBefore   time.Duration
	timeout         time.Duration
	retries         int
	hedge           string
	retryBudget     int
	// hedgePolicy is -hedge, parsed by resolveUpstream.
	hedgePolicy      hedgePolicy
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
	// listenGiven and adminGiven are set when -listen or -admin (or its
	// variable) was given, not defaulted: a socket passed by systemd for
	// the same role is then a conflict.
	listenGiven, adminGiven bool
	// fromEnv holds, by flag name, the S3_HELPER_* variable that set a
	// flag not given on the command line: a problem with its value names
	// the variable the operator wrote, not the flag.
	fromEnv map[string]envSetting

	// The fields below are derived by resolve from the flags and the
	// environment.

	// listenNetwork is "tcp" or "unix"; listenAddress is HOST:PORT or a path.
	listenNetwork, listenAddress string
	// socketPerm is -socket-mode parsed.
	socketPerm os.FileMode
	// endpointURL is -endpoint parsed; nil means S3's regional endpoint.
	endpointURL *url.URL
	// routeSpecs are the default route and every -route, before the
	// endpoint (and so the host) is known.
	routeSpecs []routeSpec
	// replicaSpecs are the -replica copies of each primary bucket, in the
	// order given; regionEndpointURLs the -region-endpoint URLs by region.
	replicaSpecs       map[string][]replicaSpec
	regionEndpointURLs map[string]*url.URL
	// level is -log-level parsed.
	level slog.Level
	// imdsURL is the IMDS base URL without a trailing '/'.
	imdsURL string
	// source is the chosen credential source; static is its set when it is
	// the environment.
	source sourceChoice
	static *Credentials
	// stsURL is -sts-endpoint or its variables; nil means the regional
	// endpoint.
	stsURL *url.URL
	// newRelicKey is the New Relic license key (a secret); empty disables
	// the push.
	newRelicKey string
}

// resolve checks everything that needs no network and returns a copy of c
// with the derived fields filled in (the input is not changed), or a
// configError naming every problem at once.
func (c config) resolve(getenv func(string) string) (config, error) {
	var p problems
	c.resolveListeners(&p, getenv)
	c.resolveRouting(&p, getenv)
	c.resolveUpstream(&p)
	c.resolveCredentialSource(&p, getenv)
	c.resolveOutputs(&p, getenv)
	c.resolvePresign(&p)
	p.namingVariables(c.fromEnv)
	if len(p) > 0 {
		return c, configError{p}
	}
	return c, nil
}

// resolveListeners checks -listen, -socket-mode, -admin, -pprof and the
// client-side timeouts. The admin listener for -pprof is -admin or the
// admin socket systemd passes (which rules -admin out).
func (c *config) resolveListeners(p *problems, getenv func(string) string) {
	c.listenNetwork, c.listenAddress = "tcp", c.listen
	if path, ok := strings.CutPrefix(c.listen, "unix:"); ok {
		c.listenNetwork, c.listenAddress = "unix", path
		if path == "" {
			p.bad("listen", c.listen, "unix: needs a socket path")
		}
		mode, err := strconv.ParseUint(c.socketMode, 8, 32)
		if err != nil || mode > 0o777 {
			p.bad("socket-mode", c.socketMode, "must be octal permissions such as 0660")
		}
		c.socketPerm = os.FileMode(mode)
	} else if err := checkListenAddr(c.listen, c.allowRemote); err != nil {
		p.bad("listen", c.listen, err.Error())
	}
	if c.admin != "" {
		if err := checkListenAddr(c.admin, c.allowRemote); err != nil {
			p.bad("admin", c.admin, err.Error())
		}
	}
	if c.pprof && c.admin == "" && !passesAdminSocket(getenv, os.Getpid()) {
		p.bad("pprof", "true", "needs -admin, or an admin socket passed by systemd: profiles are never served on the proxy port")
	}
	if c.readHeaderWait < 10*time.Millisecond || c.readHeaderWait > 5*time.Minute {
		p.bad("read-header-timeout", c.readHeaderWait.String(), "must be between 10ms and 5m")
	}
	if c.shutdownTimeout < 0 {
		p.bad("shutdown-timeout", c.shutdownTimeout.String(), "must not be negative")
	}
}

// resolveRouting checks -bucket, -prefix, -route, -region and -endpoint.
// The region falls back to $AWS_REGION, then $AWS_DEFAULT_REGION.
func (c *config) resolveRouting(p *problems, getenv func(string) string) {
	if c.bucket == "" {
		p.bad("bucket", "", "required")
	} else if err := checkBucket(c.bucket); err != nil {
		p.bad("bucket", c.bucket, err.Error())
	}
	if err := checkKeyPrefix(c.prefix); err != nil {
		p.bad("prefix", c.prefix, err.Error())
	}
	c.routeSpecs = []routeSpec{{"/", c.bucket, c.prefix}}
	seen := map[string]bool{"/": true}
	for _, r := range c.routes {
		spec, err := parseRoute(r)
		switch {
		case err != nil:
			p.bad("route", r, err.Error())
		case seen[spec.pathPrefix]:
			p.bad("route", r, "path prefix "+spec.pathPrefix+" is already routed")
		default:
			seen[spec.pathPrefix] = true
			c.routeSpecs = append(c.routeSpecs, spec)
		}
	}
	c.region = cmp.Or(c.region, getenv("AWS_REGION"), getenv("AWS_DEFAULT_REGION"))
	if c.region != "" && !isRegionName(c.region) {
		p.bad("region", c.region, "must look like us-east-1 (lower-case letters, digits and '-')")
	}
	if c.endpoint != "" {
		u, err := parseEndpoint(c.endpoint)
		if err != nil {
			p.bad("endpoint", c.endpoint, err.Error())
		}
		c.endpointURL = u
	}
	c.resolveReplicas(p)
	for _, z := range zoneProblems(c.routeSpecs, c.region, c.replicaSpecs) {
		p.bad(z.flag, z.value, z.err.Error())
	}
}

// resolveReplicas checks -replica and -region-endpoint: each replica names
// a primary that is served, another bucket, and a region.
func (c *config) resolveReplicas(p *problems) {
	primaries := map[string]bool{}
	for _, sp := range c.routeSpecs {
		primaries[sp.bucket] = true
	}
	c.replicaSpecs = map[string][]replicaSpec{}
	// A bucket's health is kept by its name: one name is one copy, so a
	// replica has one region, -region when it is also a route's bucket.
	replicaRegion := map[string]string{}
	for _, v := range c.replicas {
		primary, rs, err := parseReplica(v)
		switch {
		case err != nil:
			p.bad("replica", v, err.Error())
		case !primaries[primary]:
			p.bad("replica", v, "primary "+primary+" is neither -bucket nor a -route bucket")
		case rs.bucket == primary:
			p.bad("replica", v, "the replica is the primary itself")
		case slices.Contains(c.replicaSpecs[primary], rs):
			p.bad("replica", v, "given twice")
		case primaries[rs.bucket] && rs.region != c.region:
			p.bad("replica", v, "the replica "+rs.bucket+" is also served as a bucket in -region "+c.region+", not in "+rs.region)
		case replicaRegion[rs.bucket] != "" && replicaRegion[rs.bucket] != rs.region:
			p.bad("replica", v, "the replica "+rs.bucket+" is given in two regions, "+replicaRegion[rs.bucket]+" and "+rs.region)
		default:
			replicaRegion[rs.bucket] = rs.region
			if _, mrap, _ := mrapAlias(primary); mrap {
				p.bad("replica", v, "a Multi-Region Access Point fails over by itself")
				continue
			}
			c.replicaSpecs[primary] = append(c.replicaSpecs[primary], rs)
		}
	}
	c.regionEndpointURLs = map[string]*url.URL{}
	for _, v := range c.regionEndpoints {
		region, raw, ok := strings.Cut(v, "=")
		if !ok || !isRegionName(region) {
			p.bad("region-endpoint", v, "must be REGION=URL, such as us-west-2=https://bucket.vpce-1a2b.s3.us-west-2.vpce.amazonaws.com")
			continue
		}
		u, err := parseEndpoint(raw)
		if err != nil {
			p.bad("region-endpoint", v, err.Error())
			continue
		}
		c.regionEndpointURLs[region] = u
	}
}

// resolveUpstream checks the limits on talking to S3.
func (c *config) resolveUpstream(p *problems) {
	if c.refreshBefore < time.Second || c.refreshBefore > time.Hour {
		p.bad("refresh-before", c.refreshBefore.String(), "must be between 1s and 1h")
	}
	if c.timeout < 100*time.Millisecond || c.timeout > 5*time.Minute {
		p.bad("timeout", c.timeout.String(), "must be between 100ms and 5m")
	}
	if c.retries < 0 || c.retries > 10 {
		p.bad("retries", strconv.Itoa(c.retries), "must be between 0 and 10")
	}
	if c.retryBudget < 0 || c.retryBudget > 1_000_000 {
		p.bad("retry-budget", strconv.Itoa(c.retryBudget), "must be between 0 (no budget) and 1000000 tokens")
	}
	hp, err := parseHedge(c.hedge, c.timeout)
	if err != nil {
		p.bad("hedge", c.hedge, err.Error())
	}
	c.hedgePolicy = hp
}

// parseHedge reads -hedge: auto, off, or a fixed delay shorter than the
// attempt timeout (a hedge after the timeout would never be sent).
func parseHedge(v string, timeout time.Duration) (hedgePolicy, error) {
	switch v {
	case "auto":
		return hedgePolicy{mode: hedgeAuto}, nil
	case "off":
		return hedgePolicy{mode: hedgeOff}, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Millisecond || d >= timeout {
		return hedgePolicy{}, fmt.Errorf("must be auto, off, or a delay from 1ms to below -timeout (%v), such as 150ms", timeout)
	}
	return hedgePolicy{mode: hedgeFixed, fixed: d}, nil
}

// resolveOutputs checks logging and the metrics outputs, and reads the New
// Relic license key (-newrelic-license-key-file, then
// $NEW_RELIC_LICENSE_KEY). No problem quotes the key.
func (c *config) resolveOutputs(p *problems, getenv func(string) string) {
	if err := c.level.UnmarshalText([]byte(c.logLevel)); err != nil {
		p.bad("log-level", c.logLevel, "must be debug, info, warn or error")
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		p.bad("log-format", c.logFormat, "must be text or json")
	}
	if c.statsd != "" {
		if _, _, err := net.SplitHostPort(c.statsd); err != nil {
			p.bad("statsd", c.statsd, "must be HOST:PORT")
		}
	}
	if strings.ContainsAny(c.statsdPrefix, ":|@# \n") {
		p.bad("statsd-prefix", c.statsdPrefix, "must not contain ':', '|', '@', '#' or spaces")
	}
	if c.statsdTags != "" && strings.ContainsAny(c.statsdTags, "|@# \n") {
		p.bad("statsd-tags", c.statsdTags, "must be k:v,k2:v2 without '|', '@', '#' or spaces")
	}
	c.newRelicKey = getenv("NEW_RELIC_LICENSE_KEY")
	if c.newRelicKeyFile != "" {
		key, err := readTokenFile(c.newRelicKeyFile)
		if err != nil {
			*p = append(*p, fmt.Errorf("-newrelic-license-key-file: %w", err))
		}
		c.newRelicKey = key
	}
	for _, ch := range c.newRelicKey {
		if ch <= ' ' || ch > '~' {
			*p = append(*p, errors.New("New Relic license key: must be printable ASCII without spaces"))
			break
		}
	}
	if u, err := url.Parse(c.newRelicEndpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		p.bad("newrelic-endpoint", c.newRelicEndpoint, "must be an https:// URL")
	}
	if c.newRelicInterval < time.Second || c.newRelicInterval > 10*time.Minute {
		p.bad("newrelic-interval", c.newRelicInterval.String(), "must be between 1s and 10m")
	}
}

// resolvePresign checks -presign with the proxy's own key rules, so a
// printed URL names an object the proxy would also serve.
func (c *config) resolvePresign(p *problems) {
	if !c.presignRequested {
		return
	}
	if err := checkPresignKey(c.prefix, c.presign); err != nil {
		p.bad("presign", c.presign, err.Error())
	}
	if c.presignExpires < time.Second || c.presignExpires > maxPresignExpiry {
		p.bad("presign-expires", c.presignExpires.String(), "must be between 1s and 168h (7 days, S3's limit)")
	}
}

// resolveCredentialSource chooses the credential source and checks what it
// and -assume-role need, without touching the network.
func (c *config) resolveCredentialSource(p *problems, getenv func(string) string) {
	akid, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
	if (akid == "") != (secret == "") {
		*p = append(*p, errors.New("$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY: set both or neither"))
	}
	choice, err := chooseSource(c.credentials, getenv)
	if err != nil {
		p.bad("credentials", c.credentials, err.Error())
	}
	c.source = choice
	if choice.name == sourceEnvironment {
		c.static = newCredentials(akid, secret, getenv("AWS_SESSION_TOKEN"), time.Time{}, sourceEnvironment)
	}
	checkSourceVariables(p, choice.name, getenv)
	// IMDS is the source or, without -region, where the region comes from.
	c.imdsURL = strings.TrimRight(cmp.Or(c.imdsEndpoint, getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT"), defaultIMDSEndpoint), "/")
	if u, err := url.Parse(c.imdsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.bad("imds-endpoint", c.imdsURL, "must be an http:// or https:// URL with a host")
	} else if u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		// User info would be printed in the start-up log and /healthz.
		p.bad("imds-endpoint", u.Redacted(), "must have no path, query or user info")
	}
	c.checkAssumeRole(p, getenv)
}

// checkSourceVariables checks the environment the chosen source reads:
// web identity's role and session name, the container endpoint's URL and
// token.
func checkSourceVariables(p *problems, source string, getenv func(string) string) {
	variable := func(name, rule string) {
		*p = append(*p, fmt.Errorf("$%s %q: %s", name, clip(getenv(name), maxQuotedValueBytes), rule))
	}
	switch source {
	case sourceWebIdentity:
		if !isRoleARN(getenv("AWS_ROLE_ARN")) {
			variable("AWS_ROLE_ARN", "must be a role ARN such as arn:aws:iam::123456789012:role/NAME")
		}
		if n := getenv("AWS_ROLE_SESSION_NAME"); n != "" && !validSessionName(n) {
			variable("AWS_ROLE_SESSION_NAME", "must be 2 to 64 of A-Za-z0-9_+=,.@-")
		}
	case sourceContainer:
		if getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") == "" {
			if err := checkContainerURL(getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")); err != nil {
				variable("AWS_CONTAINER_CREDENTIALS_FULL_URI", err.Error())
			}
		}
		if strings.ContainsAny(getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN"), "\r\n") {
			*p = append(*p, errors.New("$AWS_CONTAINER_AUTHORIZATION_TOKEN: contains a line break"))
		}
	}
}

// checkAssumeRole checks -assume-role, what goes with it, and STS's
// endpoint.
func (c *config) checkAssumeRole(p *problems, getenv func(string) string) {
	if c.assumeRole != "" && !isRoleARN(c.assumeRole) {
		p.bad("assume-role", c.assumeRole, "must be a role ARN such as arn:aws:iam::123456789012:role/NAME")
	}
	if c.roleSessionName != "" && !validSessionName(c.roleSessionName) {
		p.bad("role-session-name", c.roleSessionName, "must be 2 to 64 of A-Za-z0-9_+=,.@-")
	}
	if c.externalID != "" && (len(c.externalID) < 2 || len(c.externalID) > 1224 || strings.ContainsAny(c.externalID, " \t\r\n")) {
		p.bad("external-id", c.externalID, "must be 2 to 1224 characters without spaces")
	}
	if (c.externalID != "" || c.roleSessionName != "") && c.assumeRole == "" {
		p.bad("assume-role", "", "needed by -external-id and -role-session-name")
	}
	if v := cmp.Or(c.stsEndpoint, getenv("AWS_ENDPOINT_URL_STS"), getenv("AWS_ENDPOINT_URL")); v != "" {
		u, err := parseEndpoint(v)
		if err != nil {
			p.bad("sts-endpoint", v, err.Error())
		}
		c.stsURL = u
	}
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

// newCredentialCaches builds the chosen source behind a cache and, with
// -assume-role, the assumed role behind a second cache on top of it. The
// last cache returned is the one that signs S3 requests.
func newCredentialCaches(cfg config, getenv func(string) string, log *slog.Logger, metrics *Metrics) []*credentialCache {
	newCache := func(p credentialProvider) *credentialCache {
		return &credentialCache{provider: p, refreshBefore: cfg.refreshBefore, log: log, metrics: metrics}
	}
	sts := &stsClient{endpoint: "https://sts." + cfg.region + ".amazonaws.com"}
	if cfg.stsURL != nil {
		sts.endpoint = cfg.stsURL.String()
	}
	var base credentialProvider
	switch cfg.source.name {
	case sourceEnvironment:
		base = staticProvider{cfg.static}
	case sourceWebIdentity:
		base = &webIdentityProvider{sts: sts, roleARN: getenv("AWS_ROLE_ARN"), tokenFile: getenv("AWS_WEB_IDENTITY_TOKEN_FILE"),
			sessionName: cmp.Or(getenv("AWS_ROLE_SESSION_NAME"), defaultSessionName(time.Now()))}
	case sourceContainer:
		u := getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")
		if rel := getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"); rel != "" {
			u = containerHost + rel
		}
		base = &containerProvider{url: u, authTokenFile: getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
			authToken: getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN")}
	default:
		base = &imdsClient{endpoint: cfg.imdsURL, role: cfg.imdsRole}
	}
	caches := []*credentialCache{newCache(base)}
	if cfg.assumeRole != "" {
		caches = append(caches, newCache(&assumeRoleProvider{sts: sts, base: caches[0],
			signer: &Signer{Region: cfg.region, Service: serviceSTS}, roleARN: cfg.assumeRole, externalID: cfg.externalID,
			sessionName: cmp.Or(cfg.roleSessionName, defaultSessionName(time.Now()))}))
	}
	return caches
}

// discoverRegion asks IMDS for the instance's region when neither -region
// nor the environment named one, and sets the default endpoint from it.
func (c *config) discoverRegion(ctx context.Context) error {
	if c.region == "" {
		rctx, cancel := context.WithTimeout(ctx, regionTimeout)
		region, err := (&imdsClient{endpoint: c.imdsURL}).Region(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("no -region, $AWS_REGION or $AWS_DEFAULT_REGION, and %w", err)
		}
		c.region = region
	}
	if c.endpointURL == nil {
		c.endpointURL = defaultEndpoint(c.region)
	}
	return nil
}

// newRoutes builds the routes from the configuration: buckets, their
// replicas, and directory buckets at their zonal endpoints. A replica in
// -region is reached at -endpoint (a VPC endpoint serves the region's
// buckets), unless -region-endpoint names that region.
func newRoutes(cfg config) []route {
	regionEndpoints := maps.Clone(cfg.regionEndpointURLs)
	var custom *url.URL
	if cfg.endpoint != "" {
		custom = cfg.endpointURL
		if regionEndpoints == nil {
			regionEndpoints = map[string]*url.URL{}
		}
		if regionEndpoints[cfg.region] == nil {
			regionEndpoints[cfg.region] = cfg.endpointURL
		}
	}
	routes := withReplicas(buildRoutes(cfg.routeSpecs, cfg.endpointURL, cfg.pathStyle, cfg.endpoint != ""), cfg.replicaSpecs, regionEndpoints, cfg.pathStyle)
	return withDirectoryBuckets(routes, cfg.region, custom, regionEndpoints)
}

// newS3Client builds the S3 client from the configuration: requests to a
// name go to its front-end addresses, each over a pool of its own; the
// shared transport dials an address endpoint, and each directory bucket
// where -endpoint says.
func newS3Client(cfg config, routes []route, creds credentialGetter, metrics *Metrics, log *slog.Logger) *s3Client {
	c := &s3Client{
		scheme: cfg.endpointURL.Scheme,
		signer: &Signer{Region: cfg.region}, creds: creds, transport: withDialAddrs(newUpstreamTransport(cfg.timeout), routes),
		metrics: metrics, log: log, timeout: cfg.timeout,
		policy: retryPolicy{limit: cfg.retries, budget: newRetryBudget(int64(cfg.retryBudget), log), hedge: cfg.hedgePolicy, hedges: newHedgeAllowance()},
	}
	c.fronts = &frontDoor{newTransport: func(addr netip.AddrPort) frontTransport { return frontEndTransport(cfg.timeout, addr) },
		log: log.With("component", "front-ends"), metrics: metrics, background: &c.background, timeout: cfg.timeout}
	return c
}

// newProxy builds the request handler from the configuration. Routes to
// directory buckets get their bucket's session cache (express.go).
func newProxy(cfg config, creds credentialGetter, metrics *Metrics, log *slog.Logger) *Proxy {
	routes := newRoutes(cfg)
	s3 := newS3Client(cfg, routes, creds, metrics, log)
	routes = withSessions(routes, creds, s3.transport, metrics, log)
	return &Proxy{
		routes: routes, upstream: s3,
		metrics: metrics, log: log, accessLog: cfg.accessLog, idle: make(chan struct{}, 1),
	}
}
