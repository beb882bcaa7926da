package main

// The command line: every flag with its help, the S3_HELPER_* variables
// that fill the flags not given, and a parser that reports every unknown
// flag and unparsable value at once with the form expected, instead of
// stopping at the first with a usage dump.

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// routeFlags collects repeatable -route values.
type routeFlags []string

// String joins the routes given so far.
func (r *routeFlags) String() string { return strings.Join(*r, ",") }

// Set adds one -route value; parseRoute checks it later with the rest.
func (r *routeFlags) Set(v string) error { *r = append(*r, v); return nil }

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
	fs.Var((*routeFlags)(&cfg.replicas), "replica", "PRIMARY=REPLICA@REGION: a copy of PRIMARY (-bucket or a -route bucket) in another region, used when PRIMARY's region cannot serve; repeatable, tried in the order given")
	fs.Var((*routeFlags)(&cfg.regionEndpoints), "region-endpoint", "REGION=URL: the endpoint of a replica's region when AWS's regional endpoint does not fit (a VPC endpoint, an S3-compatible server); repeatable")
	fs.Var((*routeFlags)(&cfg.routes), "route", "PATHPREFIX=BUCKET[/KEYPREFIX]: serve another bucket under a URL prefix, e.g. /avod/=ads-bucket; repeatable, longest prefix wins")
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
	fs.IntVar(&cfg.retries, "retries", 3, "retries of a failed upstream attempt (connect errors, timeouts, 500/502/503/504), and mid-body resumes; 0 disables them and hedges")
	fs.StringVar(&cfg.hedge, "hedge", "auto", "when S3 sends no response headers within this delay, send a second attempt and take the first answer: auto (the p95 of recent times to first byte, 20ms to 1s), off, or a fixed delay such as 150ms")
	fs.IntVar(&cfg.retryBudget, "retry-budget", defaultRetryBudget, "tokens of the process's retry budget, shared by retries (5 each, 10 after a timeout), resumes and hedges (5 each) and refilled by successes; 0 means no budget")
	fs.StringVar(&cfg.newRelicKeyFile, "newrelic-license-key-file", "", "file holding a New Relic license key: push metrics to New Relic's Metric API (default: $NEW_RELIC_LICENSE_KEY; neither disables)")
	fs.StringVar(&cfg.newRelicEndpoint, "newrelic-endpoint", defaultNewRelicEndpoint, "New Relic Metric API URL; EU: https://metric-api.eu.newrelic.com/metric/v1, FedRAMP: https://gov-metric-api.newrelic.com/metric/v1")
	fs.DurationVar(&cfg.newRelicInterval, "newrelic-interval", defaultNewRelicInterval, "how often metrics are pushed to New Relic")
	fs.StringVar(&cfg.statsd, "statsd", "", "statsd HOST:PORT (UDP); empty disables metrics")
	fs.StringVar(&cfg.statsdPrefix, "statsd-prefix", "s3helper", "prefix of every metric name")
	fs.StringVar(&cfg.statsdTags, "statsd-tags", "", "DogStatsD tags added to every metric, k:v,k2:v2; empty sends plain statsd")
	fs.StringVar(&cfg.admin, "admin", "", "admin listener HOST:PORT for /healthz (and /debug/pprof/ with -pprof); empty disables")
	fs.BoolVar(&cfg.pprof, "pprof", false, "serve /debug/pprof/ on the admin listener (-admin, or the admin socket systemd passes)")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "text or json (log/slog on stderr)")
	fs.BoolVar(&cfg.accessLog, "access-log", false, "log one line per request (method, key, range, status, upstream status, bytes, duration, attempts)")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, SIGINT or SIGHUP, how long in-flight requests may take to finish; keep it below the service manager's stop timeout (TimeoutStopSec=, terminationGracePeriodSeconds)")
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
a flag on the command line wins. -presign, -check, -check-key and -version
are command-line only, and an S3_HELPER_* variable that is no flag's is an
error. Credentials come from the first source
configured, in the AWS SDKs' order: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY;
AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN (IRSA); AWS_CONTAINER_CREDENTIALS_*
(ECS, EKS Pod Identity); else the instance metadata service (IMDSv2).

SIGTERM, SIGINT and SIGHUP each stop s3-helper gracefully: it stops
accepting, lets requests in flight finish within -shutdown-timeout and exits
0. SIGHUP reloads nothing; restart s3-helper to apply a new configuration.

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
	cfg.fromEnv = map[string]envSetting{}
	problems = append(problems, unknownVariables(fs, getenv)...)
	fs.VisitAll(func(f *flag.Flag) {
		env := envVariable(f.Name)
		v := getenv(env)
		if oneShotFlags[f.Name] && v != "" {
			why := "it is a one-shot action, not a setting of the daemon"
			if f.Name == "presign" {
				why += ", and a presigned URL in the journal is a bearer credential"
			}
			problems = append(problems, fmt.Errorf("$%s: -%s is given on the command line only: %s", env, f.Name, why))
			return
		}
		if given[f.Name] || v == "" {
			return
		}
		cfg.fromEnv[f.Name] = envSetting{env, v}
		values := []string{v}
		if listFlags[f.Name] {
			values = strings.Split(v, ",")
		}
		for _, one := range values {
			if err := f.Value.Set(strings.TrimSpace(one)); err != nil {
				problems = append(problems, fmt.Errorf("$%s %q: must be %s", env, clip(v, maxQuotedValueBytes), expectedForm(f)))
				resetToDefault(f)
			}
		}
	})
	cfg.presignRequested = given["presign"]
	cfg.listenGiven = given["listen"] || getenv(envPrefix+"LISTEN") != ""
	cfg.adminGiven = given["admin"] || getenv(envPrefix+"ADMIN") != ""
	if len(problems) > 0 {
		return cfg, configError{problems}
	}
	return cfg, nil
}

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
			resetToDefault(f)
		}
	}
	return given, problems, nil
}

// oneShotFlags ask for an action and an exit, not for a setting of the
// daemon: they are taken from the command line only. From an
// EnvironmentFile they would turn every start of the service into that
// action, and -presign would write a bearer credential into the journal.
var oneShotFlags = map[string]bool{"presign": true, "check": true, "check-key": true, "version": true}

// envNamesQuery, asked of a getenv made by environment, answers the names
// of the S3_HELPER_* variables set, comma-separated. A variable's name
// cannot hold '=' (the environment is NAME=value), so no real variable
// answers it; a getenv that does not know it answers "", and then no
// name is checked.
const envNamesQuery = "=" + envPrefix + "*"

// getenvOf returns the getenv run reads from environ (os.Environ's
// NAME=value form): each variable's value, the first of a repeated name
// as os.Getenv has it, and the S3_HELPER_* names for envNamesQuery.
func getenvOf(environ []string) func(string) string {
	vars := map[string]string{}
	var names []string
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if _, seen := vars[k]; !ok || k == "" || seen {
			continue
		}
		vars[k] = v
		if strings.HasPrefix(k, envPrefix) {
			names = append(names, k)
		}
	}
	vars[envNamesQuery] = strings.Join(names, ",")
	return func(name string) string { return vars[name] }
}

// unknownVariables reports each S3_HELPER_* variable set (not empty) that
// is no flag's, in name order: a typo such as S3_HELPER_BUCKKET would
// otherwise leave its flag at the default without a word. It suggests the
// closest flag's variable when one is near.
func unknownVariables(fs *flag.FlagSet, getenv func(string) string) []error {
	var names []string
	for name := range strings.SplitSeq(getenv(envNamesQuery), ",") {
		if name != "" && getenv(name) != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var problems []error
	for _, name := range names {
		flagName := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, envPrefix), "_", "-"))
		if fs.Lookup(flagName) != nil && envVariable(flagName) == name {
			continue
		}
		near, best := "", 3 // at most 2 edits away
		fs.VisitAll(func(f *flag.Flag) {
			if d := editDistance(flagName, f.Name); d < best {
				near, best = f.Name, d
			}
		})
		if near != "" {
			problems = append(problems, fmt.Errorf("$%s: no flag has this variable; did you mean $%s (-%s)?", clip(name, maxQuotedValueBytes), envVariable(near), near))
			continue
		}
		problems = append(problems, fmt.Errorf("$%s: no flag has this variable (each S3_HELPER_* variable sets the flag of its name; see -help)", clip(name, maxQuotedValueBytes)))
	}
	return problems
}

// editDistance is the Levenshtein distance between a and b, in bytes
// (flag names are ASCII).
func editDistance(a, b string) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// envVariable is the S3_HELPER_* variable of a flag.
func envVariable(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// resetToDefault puts back a flag's default after a value failed to
// parse: flag's own Set leaves zero behind (a -timeout of "banana" would
// read as 0s), and validation would then report a second problem with a
// value nobody gave. The list flags never fail to parse and keep theirs.
func resetToDefault(f *flag.Flag) {
	if _, ok := f.Value.(flag.Getter); ok {
		f.Value.Set(f.DefValue)
	}
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
