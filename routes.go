package main

// How a request's URL path becomes an S3 bucket, key and host: the routes
// built from -bucket, -prefix and -route, the addressing style each needs,
// and the rules a key must meet before it is signed.

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// route maps a URL path prefix to a bucket and key prefix.
type route struct {
	// pathPrefix starts and ends with '/'; "/" is the default route.
	pathPrefix string
	bucket     string
	keyPrefix  string
	// host is the upstream Host header and dial address.
	host string
	// uriPrefix is "/BUCKET" (encoded) for path-style addressing, "" for
	// virtual-hosted style.
	uriPrefix string
	// latency is S3's recent times to first byte for this route, for the
	// hedge delay; each replica has its own (another region answers in
	// its own time).
	latency *latencyWindow
	// signer signs the route's requests when the S3 client's SigV4 signer
	// (for -region) does not: SigV4A for a Multi-Region Access Point, SigV4
	// for a replica's own region. nil otherwise.
	signer requestSigner
	// accessPoint is the Multi-Region Access Point's alias (ALIAS.mrap)
	// when bucket is one's ARN; "" for a bucket.
	accessPoint string
	// scheme and region are a replica's, from its region's endpoint; ""
	// means the proxy's -endpoint scheme and -region.
	scheme, region string
	// replicas are copies in other regions, tried in order when this
	// bucket's region cannot serve; health is set on a bucket with
	// replicas and on each replica.
	replicas []route
	health   *bucketHealth
	// directory is the S3 Express One Zone directory bucket's name taken
	// apart when bucket is one (directorybucket.go); nil otherwise.
	directory *directoryBucket
	// creds gives the route's requests their credentials when they are
	// not the proxy's: a directory bucket's session cache. nil means the
	// proxy's credentials.
	creds credentialGetter
	// dialAddr is the address (HOST:PORT) dialled for host when host must
	// stay a name that is not where to connect: a directory bucket behind
	// an -endpoint other than a zonal endpoint (an IP address). "" means
	// host itself.
	dialAddr string
}

// withReplicas gives each route the -replica copies of its bucket: same
// path and key prefix, each reached at its region's endpoint (-region-
// endpoint, else AWS's regional endpoint with the same addressing rules)
// and signed for its own region. Routes to one bucket share its health.
func withReplicas(routes []route, specs map[string][]replicaSpec, regionEndpoints map[string]*url.URL, forcePath bool) []route {
	health := map[string]*bucketHealth{}
	healthOf := func(bucket string) *bucketHealth {
		if health[bucket] == nil {
			health[bucket] = &bucketHealth{}
		}
		return health[bucket]
	}
	for i := range routes {
		for _, rs := range specs[routes[i].bucket] {
			endpoint, custom := regionEndpoints[rs.region]
			if !custom {
				endpoint = defaultEndpoint(rs.region)
			}
			replica := buildRoutes([]routeSpec{{routes[i].pathPrefix, rs.bucket, routes[i].keyPrefix}}, endpoint, forcePath, custom)[0]
			replica.scheme, replica.region = endpoint.Scheme, rs.region
			replica.signer, replica.health = &Signer{Region: rs.region}, healthOf(rs.bucket)
			routes[i].replicas = append(routes[i].replicas, replica)
			routes[i].health = healthOf(routes[i].bucket)
		}
	}
	return routes
}

// defaultEndpoint is S3's regional endpoint.
func defaultEndpoint(region string) *url.URL {
	return &url.URL{Scheme: "https", Host: "s3." + region + ".amazonaws.com"}
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

// requestSigner signs one upstream request or presigns a URL: SigV4 for a
// bucket, SigV4A for a Multi-Region Access Point.
type requestSigner interface {
	Sign(h http.Header, in *signingRequest, creds *Credentials, t time.Time)
	Presign(in signingRequest, creds *Credentials, t time.Time, expires time.Duration) (string, error)
}

// mrapHostSuffix is the global endpoint of Multi-Region Access Points:
// requests go to https://ALIAS.mrap.accesspoint.s3-global.amazonaws.com/KEY.
const mrapHostSuffix = ".accesspoint.s3-global.amazonaws.com"

// mrapAlias returns the alias of a Multi-Region Access Point ARN,
// arn:aws:s3::ACCOUNT:accesspoint/ALIAS.mrap (the form the AWS SDKs take
// as a bucket), or an error saying what is wrong; ok is false when b is
// not an access point ARN at all.
func mrapAlias(b string) (alias string, ok bool, err error) {
	rest, found := strings.CutPrefix(b, "arn:")
	if !found {
		return "", false, nil
	}
	const form = "must be arn:aws:s3::ACCOUNT:accesspoint/ALIAS.mrap (a Multi-Region Access Point)"
	partition, rest, _ := strings.Cut(rest, ":s3::")
	account, resource, _ := strings.Cut(rest, ":accesspoint/")
	name, isMRAP := strings.CutSuffix(resource, ".mrap")
	if partition != "aws" || len(account) != 12 || strings.Trim(account, "0123456789") != "" || !isMRAP || name == "" || len(name) > 63 {
		return "", true, errors.New(form)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return "", true, errors.New(form + ": the alias is lower-case letters and digits")
		}
	}
	return resource, true, nil
}

// uri is the request target of key (relative to the route) at S3, encoded
// as SigV4 signs it: the bucket segment for path-style addressing, then the
// key prefix and key.
func (r route) uri(key string) string { return r.uriPrefix + canonicalURI(r.keyPrefix+key) }

// upstreamURL builds a URL whose request target is uri and query exactly as
// signed: Opaque stops net/http from re-escaping the path.
func upstreamURL(scheme, host, uri, query string) *url.URL {
	opaque := uri
	if strings.HasPrefix(opaque, "//") {
		// A key starting with '/' under virtual-hosted addressing: "//key"
		// would read as an authority, so send the absolute form instead
		// (RFC 9112 §3.2.2 obliges servers to accept it).
		opaque = "//" + host + uri
	}
	return &url.URL{Scheme: scheme, Host: host, Opaque: opaque, RawQuery: query}
}

// errNoKey marks a request for a bucket root: never a listing.
var errNoKey = errors.New("no object key: listing is not served")

// mapPath chooses the route and returns the decoded key relative to it.
// path is already percent-decoded once (net/http did that and rejected bad
// escapes), so "%2e%2e" arrives here as "..".
func mapPath(routes []route, path string) (route, string, error) {
	var rt route
	found := false
	for _, candidate := range routes {
		if strings.HasPrefix(path, candidate.pathPrefix) {
			rt, found = candidate, true
			break
		}
	}
	if !found {
		return route{}, "", fmt.Errorf("%w: path %q outside every route", errNoKey, clip(path, maxKeyBytes))
	}
	key := path[len(rt.pathPrefix):]
	if key == "" {
		return rt, "", errNoKey
	}
	if err := checkClientKey(key); err != nil {
		return rt, key, err
	}
	if err := validateKey(rt.keyPrefix + key); err != nil {
		return rt, key, err
	}
	return rt, key, nil
}

// maxKeyBytes is S3's limit on the UTF-8 length of an object key.
const maxKeyBytes = 1024

// errInvalidKey is wrapped by every object-key rejection; the proxy maps it
// to 400 Bad Request.
var errInvalidKey = errors.New("invalid object key")

// validateKey reports whether key can be signed and stored by S3: valid
// UTF-8, no NUL byte, 1 to 1024 bytes
// (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html).
func validateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", errInvalidKey)
	case len(key) > maxKeyBytes:
		return fmt.Errorf("%w: %d bytes, limit %d", errInvalidKey, len(key), maxKeyBytes)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: not valid UTF-8", errInvalidKey)
	case strings.IndexByte(key, 0) >= 0:
		return fmt.Errorf("%w: contains NUL", errInvalidKey)
	}
	return nil
}

// checkClientKey rejects what a client must never smuggle into a key: dot
// segments (which would escape -prefix on a normalising server and never
// name a real video), control characters and invalid UTF-8.
func checkClientKey(key string) error {
	if !utf8.ValidString(key) {
		return fmt.Errorf("%w: not valid UTF-8", errInvalidKey)
	}
	for i, r := range key {
		// C0 (below U+0020), DEL and C1 (U+0080 to U+009F, two bytes in
		// UTF-8: %C2%85 is NEL, a line break to some log readers).
		if r < 0x20 || r >= 0x7f && r <= 0x9f {
			return fmt.Errorf("%w: control character %U at byte %d", errInvalidKey, r, i)
		}
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("%w: %q segment", errInvalidKey, seg)
		}
	}
	return nil
}

// routeSpec is a route before the endpoint (and so the host) is known.
type routeSpec struct {
	pathPrefix, bucket, keyPrefix string
}

// checkBucket applies S3's bucket naming rules, loosely enough for legacy
// us-east-1 names (upper case, '_'), which then use path style.
func checkBucket(b string) error {
	if _, ok, err := mrapAlias(b); ok {
		return err
	}
	if _, ok, err := parseDirectoryBucket(b); ok {
		return err
	}
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
	if strings.HasPrefix(target, "arn:") { // arn:…:accesspoint/ALIAS.mrap[/KEYPREFIX]
		arn, rest, _ := strings.Cut(target, ":accesspoint/")
		alias, prefix, _ := strings.Cut(rest, "/")
		bucket, keyPrefix = arn+":accesspoint/"+alias, prefix
	}
	if err := checkBucket(bucket); err != nil {
		return routeSpec{}, fmt.Errorf("bucket %q: %w", bucket, err)
	}
	if err := checkKeyPrefix(keyPrefix); err != nil {
		return routeSpec{}, fmt.Errorf("key prefix %q: %w", keyPrefix, err)
	}
	return routeSpec{prefix, bucket, keyPrefix}, nil
}

// buildRoutes resolves each route's host and addressing style, longest
// path prefix first. A Multi-Region Access Point is reached at its global
// host, or at endpoint when customEndpoint (a private endpoint, a test),
// with the key as the path, and signed with SigV4A for every region.
func buildRoutes(specs []routeSpec, endpoint *url.URL, forcePath, customEndpoint bool) []route {
	endpointHost := endpoint.Hostname()
	literalHost := endpointHost == "localhost" || net.ParseIP(endpointHost) != nil
	routes := make([]route, 0, len(specs))
	for _, sp := range specs {
		r := route{pathPrefix: sp.pathPrefix, bucket: sp.bucket, keyPrefix: sp.keyPrefix, latency: &latencyWindow{}}
		if alias, ok, _ := mrapAlias(sp.bucket); ok {
			r.accessPoint, r.signer, r.host = alias, &SignerV4A{RegionSet: "*"}, alias+mrapHostSuffix
			if customEndpoint {
				r.host = endpoint.Host
			}
			routes = append(routes, r)
			continue
		}
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

// replicaSpec is one -replica copy of a primary bucket.
type replicaSpec struct {
	bucket, region string
}

// parseReplica parses PRIMARY=REPLICA@REGION.
func parseReplica(v string) (primary string, rs replicaSpec, err error) {
	primary, copyAt, ok := strings.Cut(v, "=")
	bucket, region, ok2 := strings.Cut(copyAt, "@")
	if !ok || !ok2 || primary == "" || bucket == "" {
		return "", replicaSpec{}, errors.New("must be PRIMARY=REPLICA@REGION, such as media=media-west@us-west-2")
	}
	if err := checkBucket(primary); err != nil {
		return "", replicaSpec{}, fmt.Errorf("primary %q: %w", primary, err)
	}
	if _, mrap, _ := mrapAlias(bucket); mrap {
		return "", replicaSpec{}, errors.New("a replica is a bucket, not an access point")
	}
	if err := checkBucket(bucket); err != nil {
		return "", replicaSpec{}, fmt.Errorf("replica %q: %w", bucket, err)
	}
	if !isRegionName(region) {
		return "", replicaSpec{}, fmt.Errorf("region %q: must look like us-west-2", region)
	}
	return primary, replicaSpec{bucket, region}, nil
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
