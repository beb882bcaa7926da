package main

// S3 Express One Zone on the routes: a route (or replica) to a directory
// bucket reaches its zonal endpoint, dialled where -endpoint says, is
// signed for s3express and gets its bucket's session cache; and the
// configuration's directory buckets are checked against their regions.

import (
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"
)

// zoneProblem is a directory bucket whose zone is not in the region that
// signs for it: its zonal endpoint would not exist. flag and value name
// where it was configured.
type zoneProblem struct {
	flag, value string
	err         error
}

// zoneProblems checks each directory bucket's zone against the region
// that signs for it: region for the routes' buckets (specs[0] is -bucket,
// the rest -route; nothing is checked while region is unknown, before
// IMDS is asked), the replica's own region for a replica.
func zoneProblems(specs []routeSpec, region string, replicas map[string][]replicaSpec) []zoneProblem {
	var found []zoneProblem
	if region != "" {
		for i, sp := range specs {
			if d, ok, err := parseDirectoryBucket(sp.bucket); ok && err == nil {
				if err := checkZoneRegion(d, region); err != nil {
					zp := zoneProblem{"route", sp.pathPrefix + "=" + sp.bucket, err}
					if i == 0 {
						zp.flag, zp.value = "bucket", sp.bucket
					}
					found = append(found, zp)
				}
			}
		}
	}
	for _, rss := range replicas {
		for _, rs := range rss {
			if d, ok, err := parseDirectoryBucket(rs.bucket); ok && err == nil {
				if err := checkZoneRegion(d, rs.region); err != nil {
					found = append(found, zoneProblem{"replica", rs.bucket + "@" + rs.region, err})
				}
			}
		}
	}
	return found
}

// withDirectoryBuckets turns each route (and replica) to a directory
// bucket into one reaching its zonal endpoint: virtual-hosted whatever
// -path-style says, signed for s3express in its region (a replica's, else
// region). custom is -endpoint (nil when not given); regionEndpoints are
// the -region-endpoint URLs by region, for replicas.
func withDirectoryBuckets(routes []route, region string, custom *url.URL, regionEndpoints map[string]*url.URL) []route {
	express := func(r *route, custom *url.URL) {
		d, ok, err := parseDirectoryBucket(r.bucket)
		if !ok || err != nil {
			return
		}
		signingRegion := region
		if r.region != "" {
			signingRegion, custom = r.region, regionEndpoints[r.region]
		}
		r.directory = &d
		r.uriPrefix = ""
		r.host, r.dialAddr, r.scheme = zonalAddress(d, signingRegion, custom)
		r.signer = &expressSigner{Signer: Signer{Region: signingRegion, Service: serviceS3Express, SessionTokenHeader: headerS3SessionToken}}
	}
	for i := range routes {
		express(&routes[i], custom)
		for j := range routes[i].replicas {
			express(&routes[i].replicas[j], custom)
		}
	}
	return routes
}

// withDialAddrs returns t itself when no route has a dial address, else a
// copy that connects each such route's host to its dial address. The
// request's URL keeps the host, so TLS verifies the host's name and
// connections are pooled by it.
func withDialAddrs(t *leanTransport, routes []route) *leanTransport {
	addrs := map[string]string{}
	for _, r := range routes {
		for _, c := range append([]route{r}, r.replicas...) {
			if c.dialAddr != "" {
				if host, _, err := net.SplitHostPort(c.host); err == nil {
					addrs[host] = c.dialAddr
				} else {
					addrs[c.host] = c.dialAddr
				}
			}
		}
	}
	if len(addrs) == 0 {
		return t
	}
	like := &leanTransport{leanSettings: t.leanSettings}
	like.dialAddrs = addrs
	return like
}

// withSessions gives every route (and replica) to a directory bucket the
// session cache of its bucket, made with base's credentials and sent over
// transport; routes to one bucket share it. The request loop signs such a
// route's requests with route.creds instead of the proxy's credentials.
func withSessions(routes []route, base credentialGetter, transport http.RoundTripper, metrics *Metrics, log *slog.Logger) []route {
	caches := map[string]*sessionCache{}
	attach := func(r *route) {
		if r.directory == nil {
			return
		}
		if caches[r.bucket] == nil {
			signer := r.signer.(*expressSigner)
			caches[r.bucket] = &sessionCache{bucket: *r.directory, region: signer.Region, host: r.host, scheme: r.scheme,
				base: base, transport: transport, metrics: metrics, log: log}
		}
		r.creds = caches[r.bucket]
	}
	for i := range routes {
		attach(&routes[i])
		for j := range routes[i].replicas {
			attach(&routes[i].replicas[j])
		}
	}
	return routes
}

// closeSessions stops every session cache of routes and waits for the
// CreateSession calls in flight.
func closeSessions(routes []route) {
	for _, r := range routes {
		for _, c := range append([]route{r}, r.replicas...) {
			if sc, ok := c.creds.(*sessionCache); ok {
				sc.Close()
			}
		}
	}
}

// sessionStates is the state of each directory bucket's session cache of
// routes (and their replicas), once per cache, in the routes' order.
func sessionStates(routes []route, now time.Time) []sessionStatus {
	var states []sessionStatus
	listed := map[*sessionCache]bool{}
	for _, r := range routes {
		for _, c := range append([]route{r}, r.replicas...) {
			if sc, ok := c.creds.(*sessionCache); ok && !listed[sc] {
				listed[sc] = true
				states = append(states, sc.Status(now))
			}
		}
	}
	return states
}
