package main

// SigV4A, the asymmetric variant of SigV4 that S3 Multi-Region Access
// Points accept: the canonical request is SigV4's (canonical.go and
// sigv4.go's field collection, unchanged) with x-amz-region-set signed; the
// credential scope has no region; the string to sign is signed with an
// ECDSA P-256 key derived from the secret key (aws-c-auth's derivation),
// once per credential set. The SigV4 path does not pass through here.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

const (
	// signingAlgorithmV4A names SigV4A in the string to sign and the
	// Authorization header.
	signingAlgorithmV4A = "AWS4-ECDSA-P256-SHA256"
	// headerRegionSet carries the regions a SigV4A signature is valid in;
	// "*" for a Multi-Region Access Point.
	headerRegionSet = "X-Amz-Region-Set"
	lowerRegionSet  = "x-amz-region-set"
	// maxDerivationCounter bounds the key derivation's retries (one byte).
	maxDerivationCounter = 254
)

// SignerV4A signs requests with SigV4A for a region set. The zero value
// is not usable: set RegionSet. A SignerV4A is safe for concurrent use.
type SignerV4A struct {
	// RegionSet is the x-amz-region-set value, "*" for every region.
	RegionSet string
	// Service is the signing name; empty means "s3".
	Service string

	// keyCache holds the key derived for the most recent credential set:
	// deriving costs an HMAC and a scalar multiplication, and the set
	// changes only when credentials rotate.
	keyCache atomic.Pointer[ecdsaSigningKey]
	// fields does what SigV4A shares with SigV4: collecting the signed
	// headers (with the session token's shape cached), the date cache and
	// the signing buffers. Its Region and keys are never used.
	fields Signer
}

// ecdsaSigningKey is the private key derived for one access key and secret.
type ecdsaSigningKey struct {
	accessKeyID, secret string
	key                 *ecdsa.PrivateKey
}

// service returns the signing name, "s3" by default.
func (s *SignerV4A) service() string {
	if s.Service == "" {
		return serviceS3
	}
	return s.Service
}

// key returns the ECDSA key of creds, deriving it when the cached one is
// for another set.
func (s *SignerV4A) key(creds *Credentials) (*ecdsa.PrivateKey, error) {
	if k := s.keyCache.Load(); k != nil && k.accessKeyID == creds.AccessKeyID && k.secret == creds.SecretAccessKey {
		return k.key, nil
	}
	key, err := deriveV4AKey(creds.AccessKeyID, creds.SecretAccessKey)
	if err != nil {
		return nil, err
	}
	// Concurrent derivations race benignly: each stores an equal key.
	s.keyCache.Store(&ecdsaSigningKey{accessKeyID: creds.AccessKeyID, secret: creds.SecretAccessKey, key: key})
	return key, nil
}

// errNoV4AKey is the derivation's failure: 254 candidates all at or above
// the group order, which a working HMAC never produces.
var errNoV4AKey = errors.New("sigv4a: no P-256 key derived from the secret")

// deriveV4AKey derives the SigV4A private key as aws-c-auth does (NIST SP
// 800-108 in counter mode with HMAC-SHA256): k0 = HMAC("AWS4A"+secret,
// 0x00000001 || algorithm || 0x00 || access key ID || counter || 0x00000100)
// as a big-endian integer; the key is k0+1 for the first counter (from 1)
// whose k0 is at most n-2, n being P-256's group order.
func deriveV4AKey(accessKeyID, secret string) (*ecdsa.PrivateKey, error) {
	curve := elliptic.P256()
	limit := new(big.Int).Sub(curve.Params().N, big.NewInt(2))
	mac := hmac.New(sha256.New, []byte("AWS4A"+secret))
	k := new(big.Int)
	var raw [32]byte
	for counter := 1; counter <= maxDerivationCounter; counter++ {
		mac.Reset()
		mac.Write([]byte{0, 0, 0, 1})
		mac.Write([]byte(signingAlgorithmV4A))
		mac.Write([]byte{0})
		mac.Write([]byte(accessKeyID))
		mac.Write([]byte{byte(counter)})
		mac.Write([]byte{0, 0, 1, 0}) // the output length, 256 bits
		k.SetBytes(mac.Sum(nil))
		if k.Cmp(limit) > 0 {
			continue
		}
		k.Add(k, big.NewInt(1))
		k.FillBytes(raw[:])
		return ecdsa.ParseRawPrivateKey(curve, raw[:])
	}
	return nil, errNoV4AKey
}

// Sign adds X-Amz-Date, X-Amz-Region-Set, X-Amz-Content-Sha256,
// X-Amz-Security-Token (when creds has a session token) and Authorization
// to h, replacing any values there, as Signer.Sign does for SigV4. Should
// no key be derivable, h gets no Authorization and S3 refuses the request.
func (s *SignerV4A) Sign(h http.Header, in *signingRequest, creds *Credentials, t time.Time) {
	sig, err := s.explain(in, creds, t, true)
	if err != nil {
		delete(h, headerAuthorization)
		return
	}
	h[headerAmzDate] = []string{sig.amzDate}
	h[headerRegionSet] = []string{s.RegionSet}
	h[headerAuthorization] = []string{sig.authorization}
	if in.omitContentSHA256 {
		delete(h, headerContentSHA256)
	} else {
		h[headerContentSHA256] = []string{in.payloadHashOrEmpty()}
	}
	if creds.SessionToken != "" {
		h[headerSecurityToken] = creds.tokenHeader()
	} else {
		delete(h, headerSecurityToken)
	}
}

// explain signs in and returns every stage. With headerAuth the x-amz-*
// headers, x-amz-region-set among them, are signed; without it
// (presigning) they are in in.query.
func (s *SignerV4A) explain(in *signingRequest, creds *Credentials, t time.Time, headerAuth bool) (signingStages, error) {
	key, err := s.key(creds)
	if err != nil {
		return signingStages{}, err
	}
	amzDate := s.fields.amzDate(t)
	date := amzDate[:len(shortDateFormat)]
	signed := *in
	if headerAuth {
		signed.headers = append(append(make([]headerField, 0, len(in.headers)+1), in.headers...), headerField{lowerRegionSet, s.RegionSet})
	}
	var f signedFields
	s.fields.collectFields(&f, &signed, creds, amzDate, headerAuth)
	creq := appendCanonicalRequest(nil, &signed, &f)
	scope := date + "/" + s.service() + "/" + scopeTerminator
	creqHash := sha256.Sum256(creq)
	sts := signingAlgorithmV4A + "\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(creqHash[:])
	digest := sha256.Sum256([]byte(sts))
	der, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return signingStages{}, fmt.Errorf("sigv4a: %w", err)
	}
	stages := signingStages{amzDate: amzDate, credentialScope: scope, canonicalRequest: string(creq), stringToSign: sts,
		signedHeaders: string(appendSignedHeaders(nil, &f)), signature: hex.EncodeToString(der)}
	stages.authorization = signingAlgorithmV4A + " Credential=" + creds.AccessKeyID + "/" + scope +
		", SignedHeaders=" + stages.signedHeaders + ", Signature=" + stages.signature
	return stages, nil
}

// Presign returns the query string of a presigned SigV4A URL for in (which
// must have an empty query), valid in RegionSet for expires from t; like
// Signer.Presign it signs only the host and uses UNSIGNED-PAYLOAD.
func (s *SignerV4A) Presign(in signingRequest, creds *Credentials, t time.Time, expires time.Duration) (string, error) {
	if err := presignable(&in, expires); err != nil {
		return "", err
	}
	p, err := s.explainPresign(&in, nil, creds, t, expires)
	return p.query, err
}

// explainPresign signs in with the query parameters own plus the X-Amz-*
// ones and returns every stage and the final query string.
func (s *SignerV4A) explainPresign(in *signingRequest, own url.Values, creds *Credentials, t time.Time, expires time.Duration) (presignature, error) {
	t = t.UTC()
	var f signedFields
	s.fields.collectFields(&f, in, creds, "", false)
	params := presignParams(signingAlgorithmV4A, t.Format(shortDateFormat)+"/"+s.service()+"/"+scopeTerminator, &f, creds, t, expires, own)
	params.Set("X-Amz-Region-Set", s.RegionSet)
	withAuth := *in
	withAuth.query = canonicalQuery(params)
	sig, err := s.explain(&withAuth, creds, t, false)
	if err != nil {
		return presignature{}, err
	}
	return presignature{stages: sig, query: withAuth.query + "&X-Amz-Signature=" + sig.signature}, nil
}
