package main

// S3 Express One Zone directory buckets: the name BASE--ZONEID--x-s3, the
// zone it names and its region, the bucket's zonal endpoint and what
// -endpoint means for one, and the signer of its data requests (SigV4 for
// service s3express with a session's keys, the session token in
// x-amz-s3session-token). express.go puts them on the routes; sessions.go
// makes the sessions.
// https://docs.aws.amazon.com/AmazonS3/latest/userguide/directory-bucket-naming-rules.html
// https://docs.aws.amazon.com/AmazonS3/latest/userguide/s3-express-networking.html

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

const (
	// directoryBucketSuffix ends every directory bucket's name, after its
	// zone ID; no general purpose bucket may end so.
	directoryBucketSuffix = "--x-s3"
	// maxDirectoryBucketBytes is the longest directory bucket name, suffix
	// included.
	maxDirectoryBucketBytes = 63
	// serviceS3Express is the signing name of a directory bucket's zonal
	// endpoint, for CreateSession and for data requests.
	serviceS3Express = "s3express"
	// sourceS3Express is the Source of a session's credentials.
	sourceS3Express = "s3express-session"
)

// directoryBucket is a directory bucket's name taken apart.
type directoryBucket struct {
	// name is the whole name, BASE--ZONE--x-s3.
	name string
	// zone is the Availability Zone or Local Zone ID, e.g. use1-az4 or
	// usw2-lax1-az1.
	zone string
}

// parseDirectoryBucket takes a directory bucket's name apart. ok is false
// when b does not end in --x-s3 (a general purpose bucket, or an access
// point); err says what is wrong with a name that does.
func parseDirectoryBucket(b string) (d directoryBucket, ok bool, err error) {
	rest, found := strings.CutSuffix(b, directoryBucketSuffix)
	if !found {
		return directoryBucket{}, false, nil
	}
	const form = "a directory bucket is BASE--ZONEID--x-s3, such as media--use1-az4--x-s3"
	i := strings.LastIndex(rest, "--")
	if i <= 0 {
		return directoryBucket{}, true, errors.New(form)
	}
	base, zone := rest[:i], rest[i+2:]
	switch {
	case len(b) > maxDirectoryBucketBytes:
		return directoryBucket{}, true, fmt.Errorf("%s: at most %d characters, suffix included", form, maxDirectoryBucketBytes)
	case !isZoneID(zone):
		return directoryBucket{}, true, fmt.Errorf("%s: %q is not a zone ID such as use1-az4 or usw2-lax1-az1", form, zone)
	case !isLowerAlnum(base[0]):
		return directoryBucket{}, true, errors.New(form + ": the name starts with a lower-case letter or a digit")
	}
	for i := 0; i < len(base); i++ {
		if c := base[i]; !isLowerAlnum(c) && c != '-' {
			return directoryBucket{}, true, errors.New(form + ": lower-case letters, digits and '-' only")
		}
	}
	return directoryBucket{name: b, zone: zone}, true, nil
}

// isLowerAlnum reports whether c is a lower-case ASCII letter or a digit.
func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// isZoneID reports whether z looks like an AWS zone ID: the region's code
// (letters then digits: use1, apne1), an optional Local Zone group
// (lax1), then azN.
func isZoneID(z string) bool {
	parts := strings.Split(z, "-")
	if len(parts) < 2 || len(parts) > 3 || !strings.HasPrefix(parts[len(parts)-1], "az") {
		return false
	}
	parts[len(parts)-1] = "a" + strings.TrimPrefix(parts[len(parts)-1], "az") // letters then digits, like the others
	for _, p := range parts {
		letters := strings.TrimLeft(p, "abcdefghijklmnopqrstuvwxyz")
		if letters == p || letters == "" || strings.Trim(letters, "0123456789") != "" {
			return false
		}
	}
	return true
}

// regionZonePrefix is the first part of the zone IDs of region: us-east-1
// → use1, ap-southeast-2 → apse2, us-gov-west-1 → usgw1. ok is false for a
// region whose code this table cannot tell; nothing is checked then.
func regionZonePrefix(region string) (prefix string, ok bool) {
	parts := strings.Split(region, "-")
	if len(parts) < 3 || strings.Trim(parts[len(parts)-1], "0123456789") != "" {
		return "", false
	}
	prefix = parts[0]
	for _, p := range parts[1 : len(parts)-1] {
		code, known := map[string]string{"east": "e", "west": "w", "north": "n", "south": "s", "central": "c",
			"northeast": "ne", "northwest": "nw", "southeast": "se", "southwest": "sw", "gov": "g"}[p]
		if !known {
			return "", false
		}
		prefix += code
	}
	return prefix + parts[len(parts)-1], true
}

// checkZoneRegion reports a directory bucket whose zone is not in region:
// its zonal endpoint would not exist.
func checkZoneRegion(d directoryBucket, region string) error {
	prefix, ok := regionZonePrefix(region)
	if !ok || strings.HasPrefix(d.zone, prefix+"-") {
		return nil
	}
	return fmt.Errorf("its zone %s is not in region %s (whose zone IDs start %s-): give the bucket's region", d.zone, region, prefix)
}

// zonalHost is a directory bucket's host at its zonal endpoint,
// BUCKET.s3express-ZONE.REGION.amazonaws.com: virtual-hosted only, there
// is no path style.
func zonalHost(d directoryBucket, region string) string {
	return d.name + ".s3express-" + d.zone + "." + region + ".amazonaws.com"
}

// zonalAddress is where a directory bucket's requests go: the Host (also
// the TLS server name and what is signed), the address to dial instead of
// the Host ("" for the Host itself) and the scheme. custom is -endpoint
// (or the replica's -region-endpoint), nil when none was given:
//
//   - none: https://BUCKET.s3express-ZONE.REGION.amazonaws.com.
//   - a zonal endpoint's own host (s3express-…: the FIPS and dual-stack
//     forms): the bucket becomes its first label, as AWS's endpoint rules
//     do.
//   - anything else (an IP address, a local stand-in, a pinned address of
//     the zonal endpoint): only where to connect. A directory bucket has
//     no path style, so the Host, the TLS server name and the signature
//     keep the zonal name, which is what real S3 checks.
func zonalAddress(d directoryBucket, region string, custom *url.URL) (host, dialAddr, scheme string) {
	name := zonalHost(d, region)
	switch {
	case custom == nil:
		return name, "", "https"
	case strings.HasPrefix(custom.Hostname(), "s3express-"):
		return d.name + "." + custom.Host, "", custom.Scheme
	}
	port := custom.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[custom.Scheme]
	}
	return name, net.JoinHostPort(custom.Hostname(), port), custom.Scheme
}

// expressSigner signs a directory bucket's data requests: SigV4 for
// s3express with a session's keys, the session token in
// x-amz-s3session-token and never in x-amz-security-token. Its Sign is
// Signer's; Presign refuses what S3 would.
type expressSigner struct {
	Signer
}

// errPresignNeedsSession is Presign's answer to credentials that are not a
// session's: a directory bucket accepts only those.
var errPresignNeedsSession = errors.New("a directory bucket's URL is signed with one of its sessions (CreateSession), not with the role's credentials")

// Presign returns the query string of a presigned URL signed with a
// session, as the AWS SDKs and CLI make them for directory buckets: the
// session's keys, service s3express and X-Amz-S3session-Token in the
// query. S3 refuses the URL once the session has expired, so expires must
// end before the session does.
func (s *expressSigner) Presign(in signingRequest, creds *Credentials, t time.Time, expires time.Duration) (string, error) {
	if creds.Source != sourceS3Express {
		return "", errPresignNeedsSession
	}
	if left := creds.Expires.Sub(t); expires > left {
		return "", fmt.Errorf("-presign-expires %v: the session that signs a directory bucket's URL expires in %v, and S3 refuses the URL after that; give -presign-expires %v or less",
			expires, left.Truncate(time.Second), max(left-left%time.Minute, time.Second))
	}
	return s.Signer.Presign(in, creds, t, expires)
}
