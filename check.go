package main

// s3-helper -check: before the first player arrives, answer "will this
// work?" with the daemon's own flags, environment, credential sources,
// signer and transport. Each step prints one line (PASS, WARN or FAIL,
// what was checked, and for a failure the fix); nothing is written and no
// secret is printed.

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

const (
	// clockWarnOffset and clockFailOffset grade this host's clock against
	// S3's: SigV4 refuses signatures more than 15 minutes off.
	clockWarnOffset = time.Minute
	clockFailOffset = 15 * time.Minute
	// checkTimeout bounds each network step.
	checkTimeout = 15 * time.Second
)

// errCheckFailed is returned when a step failed; main exits 1.
var errCheckFailed = errors.New("some checks failed")

// checker prints step results and counts failures.
type checker struct {
	out    io.Writer
	failed int
}

// pass prints a step that works. pass, warn and fail print one step's
// result each; fix, when not empty, is the concrete remedy.
func (c *checker) pass(step, result string) { fmt.Fprintf(c.out, "PASS  %s: %s\n", step, result) }

// warn prints a step that works but needs attention, with its fix.
func (c *checker) warn(step, result, fix string) {
	fmt.Fprintf(c.out, "WARN  %s: %s\n", step, result)
	if fix != "" {
		fmt.Fprintf(c.out, "      fix: %s\n", fix)
	}
}

// fail prints a step that does not work, with its fix, and marks the
// check as failed.
func (c *checker) fail(step, result, fix string) {
	c.failed++
	fmt.Fprintf(c.out, "FAIL  %s: %s\n", step, result)
	if fix != "" {
		fmt.Fprintf(c.out, "      fix: %s\n", fix)
	}
}

// runCheck runs every step and returns errCheckFailed when one failed.
// problems are the configuration problems parsing and validation found.
func runCheck(ctx context.Context, out io.Writer, cfg config, problems []error, getenv func(string) string) error {
	c := &checker{out: out}
	if len(problems) > 0 {
		for _, p := range problems {
			c.fail("configuration", p.Error(), "see 's3-helper -help' for every flag and its form")
		}
		return errCheckFailed
	}
	c.checkListeners(cfg)
	fromIMDS := cfg.region == ""
	if err := cfg.discoverRegion(ctx); err != nil {
		c.fail("region", err.Error(), "set -region to the bucket's region, e.g. -region eu-west-1")
		return errCheckFailed
	}
	if fromIMDS {
		c.pass("region", cfg.region+" (the instance's, from IMDS)")
	}

	creds := c.checkCredentials(ctx, cfg, getenv)
	if creds == nil {
		return errCheckFailed
	}
	discard := slog.New(slog.DiscardHandler)
	cached := &credentialCache{provider: staticProvider{creds}, log: discard}
	routes := newRoutes(cfg)
	s3 := newS3Client(cfg, routes, cached, nil, discard)
	routes = withSessions(routes, cached, s3.transport, nil, discard)
	defer closeSessions(routes)
	clockChecked := false
	for i := len(routes) - 1; i >= 0; i-- { // the default route, "/", first
		// Each replica is checked like its primary: it must serve alone.
		for _, rt := range append([]route{routes[i]}, routes[i].replicas...) {
			var probe bucketProbe
			var ok bool
			if rt.directory != nil {
				probe, ok = c.checkDirectoryBucket(ctx, s3, rt)
			} else {
				probe, ok = c.checkBucket(ctx, s3, rt, cmp.Or(rt.region, cfg.region))
			}
			if !ok {
				continue
			}
			if !clockChecked {
				clockChecked = true
				c.checkClock(probe)
			}
			if rt.directory == nil {
				c.checkListBucket(rt, probe)
			}
		}
	}
	c.checkFrontEnds(ctx, s3, routes)
	if cfg.checkKey != "" {
		c.checkKey(ctx, s3, routes, cfg.checkKey)
	}
	if c.failed > 0 {
		return fmt.Errorf("%w: %d failed", errCheckFailed, c.failed)
	}
	return nil
}

// checkListeners reports whether -listen and -admin are free, without
// binding a Unix socket (that would write a file).
func (c *checker) checkListeners(cfg config) {
	addrs := []string{cfg.listenAddress}
	if cfg.admin != "" {
		addrs = append(addrs, cfg.admin)
	}
	for i, addr := range addrs {
		if i == 0 && cfg.listenNetwork == "unix" {
			if conn, err := net.Dial("unix", addr); err == nil {
				conn.Close()
				c.fail("configuration", "something already serves the socket "+addr, "stop it, or choose another -listen path")
				return
			}
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil && i == 0 && !cfg.listenGiven {
			// The default address: under socket activation systemd holds it.
			c.warn("configuration", fmt.Sprintf("%s is in use: %v", addr, err),
				"with s3-helper.socket enabled that is systemd holding it for s3-helper, as it should; otherwise stop what listens there")
			return
		}
		if err != nil {
			c.fail("configuration", fmt.Sprintf("%s is not free: %v", addr, err), "stop what listens there, or choose another -listen/-admin address")
			return
		}
		ln.Close()
	}
	c.pass("configuration", "flags and environment are valid; "+strings.Join(addrs, " and ")+" free")
}

// checkCredentials fetches a set from the chosen source (and the assumed
// role on top), reporting which source and why; it returns the set that
// would sign S3 requests, or nil.
func (c *checker) checkCredentials(ctx context.Context, cfg config, getenv func(string) string) *Credentials {
	caches := newCredentialCaches(cfg, getenv, slog.New(slog.DiscardHandler), nil)
	var creds *Credentials
	for i, cache := range caches {
		if i > 0 { // the assumed role signs its call with the base set
			cache.provider.(*assumeRoleProvider).base = &credentialCache{provider: staticProvider{creds}, log: slog.New(slog.DiscardHandler)}
		}
		fctx, cancel := context.WithTimeout(ctx, checkTimeout)
		got, err := cache.provider.Retrieve(fctx)
		cancel()
		what := cfg.source.name + " (" + cfg.source.reason + ")"
		if cfg.source.name == sourceIMDS {
			what = sourceIMDS + " " + cfg.imdsURL + " (" + cfg.source.reason + ")"
		}
		if i > 0 {
			what = sourceAssumeRole + " " + cfg.assumeRole
		}
		if err != nil {
			c.fail("credentials", what+": "+err.Error(), credentialFix(cfg.source.name, i > 0))
			return nil
		}
		creds = got
		c.pass("credentials", fmt.Sprintf("%s: access key %s, %s", what, got.AccessKeyID, expiryText(timeLeft(got.Expires, time.Now()))))
	}
	return creds
}

// credentialFix is the usual remedy when a source fails; the error itself
// carries the specific cause.
func credentialFix(source string, assumed bool) string {
	switch {
	case assumed:
		return "the role's trust policy must allow the source's role (and -external-id if it names one); the source's role needs sts:AssumeRole on it"
	case source == sourceIMDS:
		return "attach an instance profile with the role; inside a container raise the IMDSv2 hop limit to 2 " +
			"(aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2) or use a task role"
	case source == sourceWebIdentity:
		return "check the service account's eks.amazonaws.com/role-arn annotation, the role's trust policy and the cluster's OIDC provider in IAM"
	case source == sourceContainer:
		return "check the task role (ECS) or the pod identity association (EKS), and that the agent is running"
	}
	return "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
}

// bucketProbe is S3's answer to a ranged GET of a key that cannot exist.
type bucketProbe struct {
	status   int
	details  s3ErrorDetails
	date     string
	received time.Time
}

// probe sends a signed request the way the proxy would and reads S3's
// answer. A GET of one byte, not a HEAD: S3 sends no error body to a HEAD,
// and the error code is what tells a wrong secret from a wrong region.
func (c *checker) probe(ctx context.Context, s3 *s3Client, rt route, method, key string) (bucketProbe, error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	up := upstreamRequest{route: rt, method: method, client: http.Header{}}
	if method == http.MethodGet {
		up.client.Set("Range", "bytes=0-0")
	}
	up.uri = rt.uri(key)
	resp, err := s3.send(ctx, &up)
	if err != nil {
		return bucketProbe{}, err
	}
	pr := bucketProbe{status: resp.StatusCode, date: resp.Header.Get("Date"), received: time.Now()}
	pr.details = readS3Error(resp)
	return pr, nil
}

// checkBucket probes a key that cannot exist: the answer tells whether the
// bucket exists, lives in the signing region, and accepts the signature.
func (c *checker) checkBucket(ctx context.Context, s3 *s3Client, rt route, region string) (bucketProbe, bool) {
	step := "bucket " + rt.bucket
	answers := "exists and answers in region " + region
	if rt.accessPoint != "" {
		// SigV4A for every region: S3 routes to the nearest healthy copy.
		step = "access point " + rt.accessPoint
		answers = "answers SigV4A requests for every region (x-amz-region-set *)"
	}
	if rt.pathPrefix != "/" {
		step += " (route " + rt.pathPrefix + ")"
	}
	if rt.region != "" {
		step += " (replica in " + rt.region + ")"
	}
	missing := "s3-helper-check/" + randomHex() + "/no-such-key"
	pr, err := c.probe(ctx, s3, rt, http.MethodGet, missing)
	at := cmp.Or(rt.scheme, s3.scheme) + "://" + rt.host
	endpointFlag := "-endpoint"
	if rt.region != "" {
		endpointFlag = "-region-endpoint " + rt.region + "=URL (a replica in -region: -endpoint)"
	}
	if err != nil {
		c.fail(step, "S3 at "+at+" did not answer: "+err.Error(), "check "+endpointFlag+", DNS and outbound HTTPS from this host")
		return pr, false
	}
	d := pr.details
	switch {
	case regionHint(pr.status, pr.details) != "":
		fix := "set -region to the bucket's region (S3 did not name it), or fix -endpoint"
		if d.region != "" {
			fix = "set -region " + d.region
		}
		c.fail(step, fmt.Sprintf("S3 answered %d %s: the bucket is not in -region %s", pr.status, d.code, region), fix)
		return pr, false
	case d.code == "NoSuchBucket":
		c.fail(step, "S3 answered 404 NoSuchBucket: the bucket does not exist at "+at, "check -bucket (or the -route), and -endpoint")
		return pr, false
	case d.code == "SignatureDoesNotMatch":
		c.fail(step, "S3 answered 403 SignatureDoesNotMatch: the secret key does not belong to the access key ID",
			"check the credential source: AWS_SECRET_ACCESS_KEY, or the role's credentials")
		return pr, false
	case credentialsRejected(d.code):
		c.fail(step, "S3 answered "+d.code+": S3 does not accept these credentials (revoked, expired or from another partition)",
			"check the credential source and that the role still exists")
		return pr, false
	case d.code == "RequestTimeTooSkewed":
		c.checkClock(pr)
		return pr, false
	case pr.status == http.StatusNotFound && d.code == "NoSuchKey" || pr.status == http.StatusForbidden && d.code == "AccessDenied":
		c.pass(step, answers+" at "+at)
		return pr, true
	case pr.status < 300 || pr.status == http.StatusRequestedRangeNotSatisfiable:
		// S3 never serves a key that cannot exist: whatever answered is
		// not S3, or does not check signatures.
		c.fail(step, fmt.Sprintf("%s answered %d for a key that cannot exist (%s): it is not S3, or it does not check signatures", at, pr.status, missing),
			"point -endpoint at S3 (or an S3-compatible server that checks signatures)")
		return pr, false
	case pr.status == http.StatusNotFound || pr.status == http.StatusForbidden:
		c.fail(step, fmt.Sprintf("%s answered %d without S3's error code: it is not S3, or something in between answers for it", at, pr.status),
			"point -endpoint at S3 (or an S3-compatible server); check for a proxy on the way")
		return pr, false
	}
	c.fail(step, fmt.Sprintf("unexpected answer %d %s", pr.status, d.code), "check -endpoint and -path-style")
	return pr, false
}

// checkClock compares this host's clock with S3's Date header.
func (c *checker) checkClock(pr bucketProbe) {
	serverTime, err := http.ParseTime(pr.date)
	if err != nil {
		c.warn("clock", "S3 sent no usable Date header; the clock was not checked", "")
		return
	}
	offset := pr.received.Sub(serverTime.Add(dateResolution / 2)).Round(time.Second)
	desc := fmt.Sprintf("this host is %s %s S3's clock", offset.Abs(), map[bool]string{true: "ahead of", false: "behind"}[offset > 0])
	fix := "synchronise the clock: enable NTP (chrony or systemd-timesyncd; on EC2 the Amazon Time Sync Service at 169.254.169.123)"
	switch {
	case offset.Abs() > clockFailOffset:
		c.fail("clock", desc+": SigV4 refuses signatures more than 15 minutes off (s3-helper corrects itself, at one retried request per 10 minutes)", fix)
	case offset.Abs() > clockWarnOffset:
		c.warn("clock", desc, fix)
	default:
		c.pass("clock", fmt.Sprintf("within %s of S3's", max(offset.Abs(), time.Second)))
	}
}

// checkListBucket reads the missing-key probe: 404 means s3:ListBucket is
// granted; 403 means missing videos will look like permission errors.
func (c *checker) checkListBucket(rt route, pr bucketProbe) {
	step := "permissions on " + rt.bucket
	switch {
	case pr.status == http.StatusNotFound:
		c.pass(step, "a missing key is 404 (s3:ListBucket is granted)")
	case pr.status == http.StatusForbidden:
		c.fail(step, "a missing key is 403 AccessDenied: without s3:ListBucket, players asking for a missing video get a permission error instead of a not-found",
			fmt.Sprintf(`add to the role's policy {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::%s"}`, rt.bucket))
	}
}

// checkKey HEADs -check-key, a path as nginx would send it, through the
// proxy's own key mapping: 200 proves s3:GetObject.
func (c *checker) checkKey(ctx context.Context, s3 *s3Client, routes []route, path string) {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	step := "read " + path
	rt, key, err := mapPath(routes, path)
	if err != nil {
		c.fail(step, err.Error(), "give -check-key the path nginx sends, e.g. /videos/sample.mp4")
		return
	}
	c.checkKeyAt(ctx, s3, rt, key, step)
	for _, replica := range rt.replicas {
		c.checkKeyAt(ctx, s3, replica, key, step+" through the replica "+replica.bucket)
	}
}

// checkKeyAt HEADs key (relative to rt) in rt's bucket.
func (c *checker) checkKeyAt(ctx context.Context, s3 *s3Client, rt route, key, step string) {
	pr, err := c.probe(ctx, s3, rt, http.MethodHead, key)
	if errors.Is(err, errCredentialsUnavailable) { // a directory bucket without a session, said above
		c.fail(step, "not tried: nothing to sign it with", "")
		return
	}
	if err != nil {
		c.fail(step, "S3 did not answer: "+err.Error(), "check -endpoint")
		return
	}
	switch pr.status {
	case http.StatusOK, http.StatusPartialContent:
		granted := "s3:GetObject is granted"
		if rt.directory != nil {
			granted = "with a session"
		}
		c.pass(step, fmt.Sprintf("HEAD s3://%s/%s%s answered %d (%s)", rt.bucket, rt.keyPrefix, key, pr.status, granted))
	case http.StatusNotFound:
		c.fail(step, fmt.Sprintf("s3://%s/%s%s does not exist (HEAD 404)", rt.bucket, rt.keyPrefix, key), "check -check-key, -prefix and the -route key prefix")
	case http.StatusForbidden:
		if rt.directory != nil {
			c.fail(step, fmt.Sprintf("HEAD s3://%s/%s%s answered 403 with a session: the session may not read it", rt.bucket, rt.keyPrefix, key),
				"a directory bucket's reads are granted by s3express:CreateSession alone: check the bucket policy for a Deny or an s3express:SessionMode condition")
			return
		}
		c.fail(step, fmt.Sprintf("HEAD s3://%s/%s%s answered 403: s3:GetObject is not granted", rt.bucket, rt.keyPrefix, key),
			fmt.Sprintf(`add to the role's policy {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::%s/%s*"}`, rt.bucket, rt.keyPrefix))
	default:
		c.fail(step, fmt.Sprintf("HEAD answered %d", pr.status), "")
	}
}

// randomHex names a key that cannot exist.
func randomHex() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// checkDirectoryBucket checks a directory bucket as its requests will
// reach it: a session first (CreateSession, which names the permission
// to add when it is refused), then a one-byte GET of a key that cannot
// exist signed with that session: 404 means the bucket exists in its
// zone and accepts the session's signature.
func (c *checker) checkDirectoryBucket(ctx context.Context, s3 *s3Client, rt route) (bucketProbe, bool) {
	step := "bucket " + rt.bucket
	if rt.pathPrefix != "/" {
		step += " (route " + rt.pathPrefix + ")"
	}
	if rt.region != "" {
		step += " (replica in " + rt.region + ")"
	}
	endpoint := cmp.Or(rt.scheme, s3.scheme) + "://" + rt.host
	if rt.dialAddr != "" {
		endpoint += " (dialled at " + rt.dialAddr + ")"
	}
	sctx, cancel := context.WithTimeout(ctx, checkTimeout)
	session, err := rt.creds.Get(sctx, time.Now())
	cancel()
	if err != nil {
		c.fail("session for "+rt.bucket, strings.TrimPrefix(err.Error(), errCredentialsUnavailable.Error()+": "), sessionFix(err, rt))
		return bucketProbe{}, false
	}
	c.pass("session for "+rt.bucket, fmt.Sprintf("CreateSession (%s) at %s: access key %s, %s",
		createSessionMode, endpoint, session.AccessKeyID, expiryText(timeLeft(session.Expires, time.Now()))))
	pr, err := c.probe(ctx, s3, rt, http.MethodGet, "s3-helper-check/"+randomHex()+"/no-such-key")
	if err != nil {
		c.fail(step, "S3 at "+endpoint+" did not answer: "+err.Error(), "check -endpoint, DNS and outbound HTTPS from this host")
		return pr, false
	}
	switch d := pr.details; {
	case pr.status == http.StatusNotFound && d.code != "NoSuchBucket":
		c.pass(step, fmt.Sprintf("exists in zone %s and accepts the session's signature at %s", rt.directory.zone, endpoint))
		return pr, true
	case d.code == "RequestTimeTooSkewed":
		c.checkClock(pr)
	case d.code == "NoSuchBucket":
		c.fail(step, "S3 answered 404 NoSuchBucket at "+endpoint, "check the bucket's name (its zone ID) and -region")
	case credentialsRejected(d.code):
		c.fail(step, "S3 answered "+d.code+" to a request signed with a session it has just made", "check this host's clock (NTP): a session lasts only minutes")
	default:
		c.fail(step, fmt.Sprintf("unexpected answer %d %s to a request signed with a session", pr.status, d.code), "check -endpoint and -region")
	}
	return pr, false
}

// sessionFix is the remedy for a failed CreateSession: the policy
// statement to add when S3 refused it, else where to look.
func sessionFix(err error, rt route) string {
	var cerr *createSessionError
	switch {
	case errors.As(err, &cerr) && cerr.accessDenied():
		return fmt.Sprintf(`add to the role's policy {"Effect": "Allow", "Action": "s3express:CreateSession", "Resource": "%s"} with the bucket owner's account ID for ACCOUNT`, cerr.bucketARN())
	case errors.As(err, &cerr):
		return "check the bucket's name (its zone ID), -region and the credential source"
	}
	return "check DNS and outbound HTTPS to " + rt.host + " (in a VPC: a gateway endpoint for S3 Express One Zone, or a NAT), or -endpoint"
}

// checkFrontEnds connects to every address of each endpoint name the
// buckets are reached at (S3's DNS gives up to 8, each a front-end host):
// one that refuses or does not answer is one s3-helper will leave out,
// worth knowing before it does. An endpoint given as an address has none.
func (c *checker) checkFrontEnds(ctx context.Context, s3 *s3Client, routes []route) {
	seen := map[*frontEnds]bool{}
	for _, r := range routes {
		for _, rt := range append([]route{r}, r.replicas...) {
			if fs := s3.frontEndsFor(&rt); fs != nil && !seen[fs] {
				seen[fs] = true
				c.checkFrontEndsOf(ctx, fs, cmp.Or(rt.scheme, s3.scheme))
			}
		}
	}
}

// checkFrontEndsOf resolves fs's name and connects to each address: TCP,
// and for https a TLS handshake verifying the name's certificate.
func (c *checker) checkFrontEndsOf(ctx context.Context, fs *frontEnds, scheme string) {
	step := "front ends of " + fs.name
	fs.resolveNow(ctx)
	states := fs.frontStates()
	if len(states) == 0 {
		c.fail(step, "no address: "+errorText(fs.lastErrLocked()), "check DNS for "+fs.name+" from this host")
		return
	}
	var bad []string
	for _, st := range states {
		if err := dialFrontEnd(ctx, st.addr, fs.name, scheme); err != nil {
			bad = append(bad, st.addr.String()+" ("+err.Error()+")")
		}
	}
	accepts := "a connection"
	if scheme == "https" {
		accepts = "a TLS handshake for " + fs.name
	}
	switch {
	case len(bad) == 0:
		c.pass(step, fmt.Sprintf("%d addresses, each accepts %s", len(states), accepts))
	case len(bad) < len(states):
		c.warn(step, fmt.Sprintf("%d of %d addresses fail: %s; s3-helper leaves them out while the others serve", len(bad), len(states), strings.Join(bad, ", ")),
			"check the network path (security groups, firewalls, a proxy) to every address of "+fs.name)
	default:
		c.fail(step, "no address accepts "+accepts+": "+strings.Join(bad, ", "), "check the network path from this host to "+fs.name)
	}
}

// dialFrontEnd connects to addr as a request to name would, within
// checkTimeout.
func dialFrontEnd(ctx context.Context, addr netip.AddrPort, name, scheme string) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	defer conn.Close()
	if scheme != "https" {
		return nil
	}
	return tls.Client(conn, &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}).HandshakeContext(ctx)
}
