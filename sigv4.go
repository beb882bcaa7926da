package main

// AWS Signature Version 4 for S3 object reads, written against
// https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
// and https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html.
// Nothing here reads the clock or touches the network: the signing time is
// always an argument.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// signingAlgorithm names SigV4 with HMAC-SHA256 in the string to sign and
	// the Authorization header.
	signingAlgorithm = "AWS4-HMAC-SHA256"
	// amzDateFormat is the ISO 8601 basic format of X-Amz-Date.
	amzDateFormat = "20060102T150405Z"
	// shortDateFormat is the date part of the credential scope.
	shortDateFormat = "20060102"
	// scopeTerminator ends every credential scope.
	scopeTerminator = "aws4_request"
	// serviceS3 is the signing name of Amazon S3.
	serviceS3 = "s3"
	// emptyPayloadHash is the hex SHA-256 of an empty body: the payload hash of
	// every GET and HEAD we sign.
	emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	// unsignedPayload is the payload hash of presigned URLs (S3 only).
	unsignedPayload = "UNSIGNED-PAYLOAD"
	// maxPresignExpiry is the longest X-Amz-Expires S3 accepts (7 days).
	maxPresignExpiry = 7 * 24 * time.Hour
)

// Header names the signer adds, in canonical (net/http) form so that they are
// stored in an http.Header without re-canonicalisation.
const (
	headerAuthorization = "Authorization"
	headerAmzDate       = "X-Amz-Date"
	headerContentSHA256 = "X-Amz-Content-Sha256"
	headerSecurityToken = "X-Amz-Security-Token"
	lowerHost           = "host"
	lowerAmzDate        = "x-amz-date"
	lowerContentSHA256  = "x-amz-content-sha256"
	lowerSecurityToken  = "x-amz-security-token"
	// headerS3SessionToken carries an S3 Express One Zone session's token
	// on a data request (signed) and, as a query parameter, in a presigned
	// URL; such a request must not carry X-Amz-Security-Token.
	headerS3SessionToken = "X-Amz-S3session-Token"
	lowerS3SessionToken  = "x-amz-s3session-token"
	// inlineSignedHeaders is how many signed headers fit without an
	// allocation: S3 requests sign four.
	inlineSignedHeaders = 16
)

// headerField is one header covered by the signature. name may be in any
// case; the signer lower-cases it.
type headerField struct {
	name, value string
}

// signingRequest is everything a SigV4 signature covers. The caller owns it;
// the signer never modifies it.
type signingRequest struct {
	method string
	// host is the Host header value exactly as sent (with a port if the URL
	// has a non-default one).
	host string
	// uri is the canonical URI, already encoded (see canonicalURI).
	uri string
	// query is the canonical query string (see canonicalQuery).
	query string
	// headers are extra headers to sign besides host, x-amz-date,
	// x-amz-content-sha256 and x-amz-security-token. The proxy signs none:
	// Range and the conditional headers travel unsigned, as S3 allows.
	headers []headerField
	// payloadHash is the hex SHA-256 of the body; empty means emptyPayloadHash.
	payloadHash string
	// omitContentSHA256 leaves x-amz-content-sha256 out of the signed
	// headers. S3 requires the header; other services (STS) do not take
	// it, and the AWS SDKs do not send it to them.
	omitContentSHA256 bool
}

// signingStages holds every stage of one signing, for tests and -presign.
type signingStages struct {
	amzDate          string
	credentialScope  string
	canonicalRequest string
	stringToSign     string
	signedHeaders    string
	signature        string
	authorization    string
}

// Signer signs S3 requests with SigV4 for one region. The zero value is not
// usable: set Region. A Signer is safe for concurrent use.
type Signer struct {
	// Region is the signing region, e.g. "us-east-1".
	Region string
	// Service is the signing name; empty means "s3". STS's signer (for
	// AssumeRole) and the AWS test vectors use another.
	Service string
	// SessionTokenHeader names the header, in canonical form, that
	// carries the session token (signed), and its query parameter in a
	// presigned URL; empty means X-Amz-Security-Token. A directory
	// bucket's data requests use headerS3SessionToken and must not carry
	// X-Amz-Security-Token at all, so Sign then removes it.
	SessionTokenHeader string

	// keyCache holds the most recent derived signing key. Keys change once
	// a day or when credentials rotate, so one entry, swapped atomically,
	// keeps the hot path lock-free.
	keyCache atomic.Pointer[signingKey]
	// bufs recycles signing buffers so a signature allocates only its output.
	bufs sync.Pool
	// lastDate caches X-Amz-Date for the most recent second: the proxy
	// signs many requests a second, and formatting is a tenth of a signature.
	lastDate atomic.Pointer[formattedDate]
	// lastToken records whether the most recent credential set's session
	// token needs SigV4 trimming: checking a 1 KiB token byte by byte on
	// every request would cost a third of a signature.
	lastToken atomic.Pointer[tokenShape]
}

// tokenShape is whether one credential set's session token is canonical.
type tokenShape struct {
	creds     *Credentials
	canonical bool
}

// tokenIsCanonical reports whether creds' session token can be signed as
// it is, checking each credential set once.
func (s *Signer) tokenIsCanonical(creds *Credentials) bool {
	if t := s.lastToken.Load(); t != nil && t.creds == creds {
		return t.canonical
	}
	t := &tokenShape{creds: creds, canonical: !needsTrim(creds.SessionToken)}
	s.lastToken.Store(t)
	return t.canonical
}

// formattedDate is X-Amz-Date for one Unix second.
type formattedDate struct {
	unix    int64
	amzDate string
}

// amzDate returns t as X-Amz-Date.
func (s *Signer) amzDate(t time.Time) string {
	sec := t.Unix()
	if d := s.lastDate.Load(); d != nil && d.unix == sec {
		return d.amzDate
	}
	d := &formattedDate{unix: sec, amzDate: t.UTC().Format(amzDateFormat)}
	s.lastDate.Store(d)
	return d.amzDate
}

// signingKey is a derived key with the SHA-256 states of its HMAC pads
// precomputed, which saves two of the dozen blocks a signature hashes.
type signingKey struct {
	secret, date, region, service string
	derived                       [sha256.Size]byte
	// innerState and outerState are sha256 states after absorbing
	// key^ipad and key^opad (encoding.BinaryMarshaler form).
	innerState, outerState []byte
}

// signBuf is per-signature scratch space.
type signBuf struct {
	creq []byte // canonical request
	sts  []byte // the string to sign
	mac  hash.Hash
	sum  [sha256.Size]byte
	out  []byte // amzDate followed by the Authorization value
}

// service returns the signing name, "s3" by default.
func (s *Signer) service() string {
	if s.Service == "" {
		return serviceS3
	}
	return s.Service
}

// key returns the signing key for secret and day, deriving it when the
// cached one is for another secret, day, region or service.
func (s *Signer) key(secret, date string) *signingKey {
	if k := s.keyCache.Load(); k != nil && k.secret == secret && k.date == date &&
		k.region == s.Region && k.service == s.service() {
		return k
	}
	k := &signingKey{secret: secret, date: date, region: s.Region, service: s.service()}
	derived := hmacSum([]byte("AWS4"+secret), date)
	derived = hmacSum(derived[:], s.Region)
	derived = hmacSum(derived[:], k.service)
	derived = hmacSum(derived[:], scopeTerminator)
	var ipad, opad [sha256.BlockSize]byte
	for i := range ipad {
		ipad[i], opad[i] = 0x36, 0x5c
	}
	for i, c := range derived {
		ipad[i] ^= c
		opad[i] ^= c
	}
	k.derived = derived
	k.innerState, k.outerState = padState(ipad[:]), padState(opad[:])
	// Concurrent derivations race benignly: each stores an equal key.
	s.keyCache.Store(k)
	return k
}

// padState returns the marshaled SHA-256 state after absorbing pad.
func padState(pad []byte) []byte {
	h := sha256.New()
	h.Write(pad)
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic("sha256 state cannot be marshaled: " + err.Error()) // the standard library guarantees it can
	}
	return state
}

// hmacSum is HMAC-SHA256(key, msg), used only to derive signing keys.
func hmacSum(key []byte, msg string) [sha256.Size]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

// Sign adds X-Amz-Date, X-Amz-Content-Sha256, X-Amz-Security-Token (when
// creds has a session token) and Authorization to h, replacing any values
// there. h must belong to the caller's outbound request; in must describe the
// same request. Sign allocates only the two header strings.
func (s *Signer) Sign(h http.Header, in *signingRequest, creds *Credentials, t time.Time) {
	b := s.getBuf()
	sig := s.sign(b, in, creds, t, true)
	vals := make([]string, 3) // one allocation backs all three header slices
	vals[0], vals[1], vals[2] = sig.amzDate, string(b.out), in.payloadHashOrEmpty()
	h[headerAmzDate] = vals[0:1:1]
	h[headerAuthorization] = vals[1:2:2]
	if in.omitContentSHA256 {
		delete(h, headerContentSHA256)
	} else {
		h[headerContentSHA256] = vals[2:3:3]
	}
	tokenHeader := headerSecurityToken
	if s.SessionTokenHeader != "" {
		tokenHeader = s.SessionTokenHeader
		delete(h, headerSecurityToken)
	}
	if creds.SessionToken != "" {
		h[tokenHeader] = creds.tokenHeader()
	} else {
		delete(h, tokenHeader)
	}
	s.bufs.Put(b)
}

// lowerTokenHeader is the signed name of the session token's header.
func (s *Signer) lowerTokenHeader() string {
	switch s.SessionTokenHeader {
	case "":
		return lowerSecurityToken
	case headerS3SessionToken:
		return lowerS3SessionToken
	}
	return strings.ToLower(s.SessionTokenHeader)
}

// explain signs like Sign but returns every stage; for tests and -presign.
func (s *Signer) explain(in *signingRequest, creds *Credentials, t time.Time, headerAuth bool) signingStages {
	b := s.getBuf()
	defer s.bufs.Put(b)
	o := s.sign(b, in, creds, t, headerAuth)
	return signingStages{
		amzDate:          o.amzDate,
		credentialScope:  string(b.out[o.scopeStart:o.scopeEnd]),
		canonicalRequest: string(b.creq),
		stringToSign:     string(b.sts),
		signedHeaders:    string(b.out[o.signedStart:o.signedEnd]),
		signature:        string(b.out[o.signatureStart:]),
		authorization:    string(b.out),
	}
}

// getBuf takes a signing buffer from the pool.
func (s *Signer) getBuf() *signBuf {
	if b, ok := s.bufs.Get().(*signBuf); ok {
		return b
	}
	return &signBuf{creq: make([]byte, 0, 1024), sts: make([]byte, 0, 256), out: make([]byte, 0, 512), mac: sha256.New()}
}

// hmac returns HMAC-SHA256(key, msg) from the key's precomputed pad states.
func (b *signBuf) hmac(key *signingKey, msg []byte) []byte {
	restore := b.mac.(encoding.BinaryUnmarshaler)
	if err := restore.UnmarshalBinary(key.innerState); err != nil {
		panic("sha256 state cannot be restored: " + err.Error()) // marshaled by padState
	}
	b.mac.Write(msg)
	inner := b.mac.Sum(b.sum[:0])
	if err := restore.UnmarshalBinary(key.outerState); err != nil {
		panic("sha256 state cannot be restored: " + err.Error())
	}
	b.mac.Write(inner)
	return b.mac.Sum(b.sum[:0])
}

// payloadHashOrEmpty returns the payload hash, the empty-body hash by default.
func (in *signingRequest) payloadHashOrEmpty() string {
	if in.payloadHash == "" {
		return emptyPayloadHash
	}
	return in.payloadHash
}

// sign runs the SigV4 steps in spec order into b. With headerAuth the
// x-amz-* headers are signed; without it (presigning) they are expected in
// in.query instead and only in.host and in.headers are signed.
func (s *Signer) sign(b *signBuf, in *signingRequest, creds *Credentials, t time.Time, headerAuth bool) signOutput {
	amzDate := s.amzDate(t)
	date := amzDate[:len(shortDateFormat)]

	var f signedFields
	s.collectFields(&f, in, creds, amzDate, headerAuth)
	b.creq = appendCanonicalRequest(b.creq[:0], in, &f)
	key := s.key(creds.SecretAccessKey, date)

	b.sts = s.appendStringToSign(b.sts[:0], amzDate, date, sha256.Sum256(b.creq))
	mac := b.hmac(key, b.sts)

	b.out = append(b.out[:0], signingAlgorithm+" Credential="...)
	b.out = append(b.out, creds.AccessKeyID...)
	b.out = append(b.out, '/')
	scopeStart := len(b.out)
	b.out = s.appendScope(b.out, date)
	scopeEnd := len(b.out)
	b.out = append(b.out, ", SignedHeaders="...)
	signedStart := len(b.out)
	b.out = appendSignedHeaders(b.out, &f)
	signedEnd := len(b.out)
	b.out = append(b.out, ", Signature="...)
	sigStart := len(b.out)
	b.out = hex.AppendEncode(b.out, mac)
	return signOutput{amzDate, scopeStart, scopeEnd, signedStart, signedEnd, sigStart}
}

// signOutput locates the parts of the Authorization value in signBuf.out, so
// the hot path builds no strings it does not send.
type signOutput struct {
	amzDate                string
	scopeStart, scopeEnd   int
	signedStart, signedEnd int
	signatureStart         int
}

// signedFields is a sorted list of headers to sign. The first
// inlineSignedHeaders live on the stack; more spill to the heap, so no
// header is ever dropped from a signature.
type signedFields struct {
	n      int
	inline [inlineSignedHeaders]signedField
	// spill holds every field once there are more than fit inline.
	spill []signedField
}

// signedField is a header to sign; canonical values (ours: host, hashes,
// dates, a token checked when the credentials were built) skip trimming.
type signedField struct {
	name, value string
	canonical   bool
}

// add appends a header.
func (f *signedFields) add(name, value string, canonical bool) {
	field := signedField{name, value, canonical}
	switch {
	case f.spill != nil:
		f.spill = append(f.spill, field)
	case f.n < len(f.inline):
		f.inline[f.n] = field
		f.n++
	default:
		f.spill = append(append(make([]signedField, 0, 2*len(f.inline)), f.inline[:]...), field)
	}
}

// list returns the headers added so far.
func (f *signedFields) list() []signedField {
	if f.spill != nil {
		return f.spill
	}
	return f.inline[:f.n]
}

// collectFields collects the headers to sign, lower-cases their names and sorts
// them once; both the canonical headers and the signed-header list derive
// from the result.
func (s *Signer) collectFields(f *signedFields, in *signingRequest, creds *Credentials, amzDate string, headerAuth bool) {
	f.add(lowerHost, in.host, false)
	if headerAuth {
		if !in.omitContentSHA256 {
			f.add(lowerContentSHA256, in.payloadHashOrEmpty(), true)
		}
		f.add(lowerAmzDate, amzDate, true)
		if creds.SessionToken != "" {
			f.add(s.lowerTokenHeader(), creds.SessionToken, s.tokenIsCanonical(creds))
		}
	}
	for _, h := range in.headers {
		f.add(strings.ToLower(h.name), h.value, false)
	}
	list := f.list()
	for i := 1; i < len(list); i++ {
		for j := i; j > 0 && list[j].name < list[j-1].name; j-- {
			list[j], list[j-1] = list[j-1], list[j]
		}
	}
}

// appendCanonicalRequest appends
//
//	HTTPMethod\n
//	CanonicalURI\n
//	CanonicalQueryString\n
//	CanonicalHeaders\n   (one "name:value\n" line per header name)
//	SignedHeaders\n
//	HashedPayload
//
// Repeated header names (adjacent after the stable sort) become one line
// with their trimmed values joined by ',' in their original order.
func appendCanonicalRequest(dst []byte, in *signingRequest, f *signedFields) []byte {
	dst = append(dst, in.method...)
	dst = append(dst, '\n')
	if in.uri == "" {
		dst = append(dst, '/')
	}
	dst = append(dst, in.uri...)
	dst = append(dst, '\n')
	dst = append(dst, in.query...)
	dst = append(dst, '\n')
	list := f.list()
	for i, h := range list {
		if i > 0 && list[i-1].name == h.name {
			dst = append(dst[:len(dst)-1], ',')
		} else {
			dst = append(dst, h.name...)
			dst = append(dst, ':')
		}
		if h.canonical {
			dst = append(dst, h.value...)
		} else {
			dst = appendTrimmed(dst, h.value)
		}
		dst = append(dst, '\n')
	}
	dst = append(dst, '\n')
	dst = appendSignedHeaders(dst, f)
	dst = append(dst, '\n')
	return append(dst, in.payloadHashOrEmpty()...)
}

// appendSignedHeaders appends the sorted, distinct lower-case names joined
// with ';'.
func appendSignedHeaders(dst []byte, f *signedFields) []byte {
	list := f.list()
	for i, h := range list {
		if i > 0 && list[i-1].name == h.name {
			continue
		}
		if i > 0 {
			dst = append(dst, ';')
		}
		dst = append(dst, h.name...)
	}
	return dst
}

// appendStringToSign appends
//
//	AWS4-HMAC-SHA256\n
//	amzDate\n
//	date/region/service/aws4_request\n
//	hex(SHA-256(canonical request))
func (s *Signer) appendStringToSign(dst []byte, amzDate, date string, creqHash [sha256.Size]byte) []byte {
	dst = append(dst, signingAlgorithm+"\n"...)
	dst = append(dst, amzDate...)
	dst = append(dst, '\n')
	dst = s.appendScope(dst, date)
	dst = append(dst, '\n')
	return hex.AppendEncode(dst, creqHash[:])
}

// appendScope appends the credential scope date/region/service/aws4_request.
func (s *Signer) appendScope(dst []byte, date string) []byte {
	dst = append(dst, date...)
	dst = append(dst, '/')
	dst = append(dst, s.Region...)
	dst = append(dst, '/')
	dst = append(dst, s.service()...)
	return append(dst, "/"+scopeTerminator...)
}

// Presign returns the query string of a presigned URL for in (which must
// have an empty query), valid for expires from t. S3 presigned URLs sign
// only the host and use UNSIGNED-PAYLOAD
// (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html).
func (s *Signer) Presign(in signingRequest, creds *Credentials, t time.Time, expires time.Duration) (string, error) {
	if err := presignable(&in, expires); err != nil {
		return "", err
	}
	return s.explainPresign(&in, nil, creds, t, expires).query, nil
}

// presignable checks what a presigned S3 URL needs (SigV4 or SigV4A) and
// sets the payload hash to UNSIGNED-PAYLOAD unless one is given.
func presignable(in *signingRequest, expires time.Duration) error {
	if expires < time.Second || expires > maxPresignExpiry {
		return fmt.Errorf("presign expiry %v: must be between 1s and %v", expires, maxPresignExpiry)
	}
	if in.query != "" {
		return errors.New("presign: the request must have no query of its own")
	}
	if in.payloadHash == "" {
		in.payloadHash = unsignedPayload
	}
	return nil
}

// presignParams are a presigned URL's X-Amz-* query parameters (SigV4 or
// SigV4A, by algorithm and scope) merged with the request's own.
func presignParams(algorithm, scope string, f *signedFields, creds *Credentials, t time.Time, expires time.Duration, own url.Values) url.Values {
	params := url.Values{
		"X-Amz-Algorithm":     {algorithm},
		"X-Amz-Credential":    {creds.AccessKeyID + "/" + scope},
		"X-Amz-Date":          {t.Format(amzDateFormat)},
		"X-Amz-Expires":       {strconv.FormatInt(int64(expires/time.Second), 10)},
		"X-Amz-SignedHeaders": {string(appendSignedHeaders(nil, f))},
	}
	if creds.SessionToken != "" {
		params.Set("X-Amz-Security-Token", creds.SessionToken)
	}
	for name, values := range own {
		params[name] = append(params[name], values...)
	}
	return params
}

// presignature is a presigning's stages plus the final query string.
type presignature struct {
	stages signingStages
	query  string
}

// explainPresign signs in with the query parameters own plus the X-Amz-*
// ones and returns every stage; in.query is replaced.
func (s *Signer) explainPresign(in *signingRequest, own url.Values, creds *Credentials, t time.Time, expires time.Duration) presignature {
	t = t.UTC()
	date := t.Format(shortDateFormat)
	var f signedFields
	s.collectFields(&f, in, creds, "", false)
	params := presignParams(signingAlgorithm, string(s.appendScope(nil, date)), &f, creds, t, expires, own)
	if s.SessionTokenHeader != "" && creds.SessionToken != "" {
		params.Del("X-Amz-Security-Token")
		params.Set(s.SessionTokenHeader, creds.SessionToken)
	}
	withAuth := *in
	withAuth.query = canonicalQuery(params)
	sig := s.explain(&withAuth, creds, t, false)
	return presignature{stages: sig, query: withAuth.query + "&X-Amz-Signature=" + sig.signature}
}
