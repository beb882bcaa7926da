package main

// SigV4 against AWS's published vectors (the S3 worked examples and the
// signature test suite), every stage compared, and the bytes on the wire.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// AWS's example credentials from the S3 API reference
// (sig-v4-header-based-auth.html, "Examples: Signature Calculations").
const (
	docsAccessKeyID = "AKIAIOSFODNN7EXAMPLE"
	docsSecret      = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	docsHost        = "examplebucket.s3.amazonaws.com"
	// docsSigningKey is HMAC chain AWS4+secret → 20130524 → us-east-1 → s3 → aws4_request.
	docsSigningKey = "dbb893acc010964918f1fd433add87c70e8b0db6be30c1fbeafefa5ec6ba8378"
)

var docsTime = time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)

// TestS3WorkedExamples checks every stage of the S3 API reference's worked
// examples.
func TestS3WorkedExamples(t *testing.T) {
	tests := []struct {
		name, method, key, query, payloadHash string
		headers                               []headerField
		canonicalRequest, stringToSign        string
		signature, authorization              string
	}{
		{
			name: "get-object", method: "GET", key: "test.txt",
			headers:          []headerField{{"Range", "bytes=0-9"}},
			canonicalRequest: "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\nx-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
			stringToSign:     "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
			signature:        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
			authorization:    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
		},
		{
			name: "put-object", method: "PUT", key: "test$file.text",
			payloadHash:      "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
			headers:          []headerField{{"Date", "Fri, 24 May 2013 00:00:00 GMT"}, {"x-amz-storage-class", "REDUCED_REDUNDANCY"}},
			canonicalRequest: "PUT\n/test%24file.text\n\ndate:Fri, 24 May 2013 00:00:00 GMT\nhost:examplebucket.s3.amazonaws.com\nx-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\nx-amz-date:20130524T000000Z\nx-amz-storage-class:REDUCED_REDUNDANCY\n\ndate;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
			stringToSign:     "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d",
			signature:        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
		},
		{
			name: "get-bucket-lifecycle", method: "GET", query: "lifecycle",
			canonicalRequest: "GET\n/\nlifecycle=\nhost:examplebucket.s3.amazonaws.com\nx-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nx-amz-date:20130524T000000Z\n\nhost;x-amz-content-sha256;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
			stringToSign:     "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca",
			signature:        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
		},
		{
			name: "list-objects", method: "GET", query: "max-keys=2&prefix=J",
			canonicalRequest: "GET\n/\nmax-keys=2&prefix=J\nhost:examplebucket.s3.amazonaws.com\nx-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nx-amz-date:20130524T000000Z\n\nhost;x-amz-content-sha256;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
			stringToSign:     "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\ndf57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7",
			signature:        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uri := canonicalURI(tt.key)
			if tt.key == "" {
				uri = "/"
			}
			got, err := signVector(vectorRequest{akid: docsAccessKeyID, secret: docsSecret, method: tt.method, host: docsHost,
				uri: uri, rawQuery: tt.query, headers: tt.headers, payloadHash: tt.payloadHash, at: docsTime})
			if err != nil {
				t.Fatal(err)
			}
			compareStages(t, got, tt.canonicalRequest, tt.stringToSign, tt.signature)
			if tt.authorization != "" && got.authorization != tt.authorization {
				t.Errorf("authorization = %q, want %q", got.authorization, tt.authorization)
			}
			if k := (&Signer{Region: "us-east-1"}).key(docsSecret, "20130524"); hex.EncodeToString(k.derived[:]) != docsSigningKey {
				t.Errorf("signing key = %x, want %s", k.derived, docsSigningKey)
			}
		})
	}
}

func compareStages(t *testing.T, got signingStages, creq, sts, sig string) {
	t.Helper()
	if got.canonicalRequest != creq {
		t.Errorf("canonical request:\n%s\nwant:\n%s", got.canonicalRequest, creq)
	}
	if sts != "" && got.stringToSign != sts {
		t.Errorf("string to sign:\n%s\nwant:\n%s", got.stringToSign, sts)
	}
	if got.signature != sig {
		t.Errorf("signature = %s, want %s", got.signature, sig)
	}
}

// TestPresignedGetExample checks the S3 reference's presigned URL example.
func TestPresignedGetExample(t *testing.T) {
	creds := newCredentials(docsAccessKeyID, docsSecret, "", time.Time{}, sourceEnvironment)
	s := &Signer{Region: "us-east-1"}
	in := signingRequest{method: "GET", host: docsHost, uri: "/test.txt", payloadHash: unsignedPayload}
	got := s.explainPresign(&in, nil, creds, docsTime, 86400*time.Second)
	compareStages(t, got.stages,
		"GET\n/test.txt\nX-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\nhost:examplebucket.s3.amazonaws.com\n\nhost\nUNSIGNED-PAYLOAD",
		"AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04",
		"aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
	const wantQuery = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
	if got.query != wantQuery {
		t.Errorf("query = %s, want %s", got.query, wantQuery)
	}
	q, err := s.Presign(signingRequest{method: "GET", host: docsHost, uri: "/test.txt"}, creds, docsTime, 86400*time.Second)
	if err != nil || q != wantQuery {
		t.Errorf("Presign = %q, %v; want %q", q, err, wantQuery)
	}
	if _, err := s.Presign(in, creds, docsTime, 8*24*time.Hour); err == nil {
		t.Error("Presign accepted an 8-day expiry; S3 allows 7 days at most")
	}
	withToken := newCredentials(docsAccessKeyID, docsSecret, "tok/en+", time.Time{}, sourceIMDS)
	q, err = s.Presign(in, withToken, docsTime, time.Hour)
	if err != nil || !strings.Contains(q, "&X-Amz-Security-Token=tok%2Fen%2B&") {
		t.Errorf("Presign with a session token = %q, %v; want an encoded X-Amz-Security-Token", q, err)
	}
}

// Common parameters of AWS's SigV4 test suite.
const (
	suiteAccessKeyID = "AKIDEXAMPLE"
	suiteSecret      = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
)

var suiteTime = time.Date(2015, 8, 30, 12, 36, 0, 0, time.UTC)

// suiteVector is one header-signing case of the aws-c-auth v4 suite
// (service "service", no x-amz-content-sha256).
type suiteVector struct {
	name, method, path, query, host, token string
	headers                                []headerField
	canonicalRequest, signature            string
}

// suiteVectors are the aws-c-auth v4 cases that apply to S3 (verdict "use"),
// including the *-unnormalized ones that show S3 keeps paths verbatim.
var suiteVectors = []suiteVector{
	{name: "get-header-key-duplicate", method: "GET", path: "/", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{{"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}},
		canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"},
	{name: "get-header-value-order", method: "GET", path: "/", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{{"My-Header1", "value4"}, {"My-Header1", "value1"}, {"My-Header1", "value3"}, {"My-Header1", "value2"}},
		canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value4,value1,value3,value2\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"},
	{name: "get-header-value-trim", method: "GET", path: "/", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{{"My-Header1", " value1"}, {"My-Header2", " \"a   b   c\""}},
		canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
	{name: "get-relative-relative-unnormalized", method: "GET", path: "/example1/example2/../..", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/example1/example2/../..\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "dc33e0856fd4baca4d7aa2146c38958283844764f38c74252a333df5e613003b"},
	{name: "get-relative-unnormalized", method: "GET", path: "/example/..", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/example/..\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "eca7ead57bb5aa5c8e28007acd4ff04e1ff9a0ff3b237ec1554a184887ff9282"},
	{name: "get-slash-dot-slash-unnormalized", method: "GET", path: "/./", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/./\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "68714168e6557f8f2de0ef956fc24dc2593a4bd2961f8df51898d8a134695145"},
	{name: "get-slash-pointless-dot-unnormalized", method: "GET", path: "/./example", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/./example\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "beb03f223f7deae4146464f06e29eebbee9c8afbe15c290cf07aa8b119e14cff"},
	{name: "get-slash-unnormalized", method: "GET", path: "//", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n//\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "c88bcd3d312d75078c0cd961d6deae3f4c754924b01669efcfcb439fd5e5b76e"},
	{name: "get-slashes-unnormalized", method: "GET", path: "//example//", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n//example//\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "87cca117541a147f6df867677d98a7d80dff226d2bfca9e4ffa899665623c7e5"},
	{name: "get-space-normalized", method: "GET", path: "/example space/", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/example%20space/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"},
	{name: "get-space-unnormalized", method: "GET", path: "/example space/", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/example%20space/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"},
	{name: "get-unreserved", method: "GET", path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"},
	{name: "get-utf8", method: "GET", path: "/ሴ", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"},
	{name: "get-vanilla", method: "GET", path: "/", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
	{name: "get-vanilla-empty-query-key", method: "GET", path: "/", query: "Param1=value1", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb"},
	{name: "get-vanilla-query", method: "GET", path: "/", query: "", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
	{name: "get-vanilla-query-order-encoded", method: "GET", path: "/", query: "Param-3=Value3&Param=Value2&%E1%88%B4=Value1", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/\n%E1%88%B4=Value1&Param=Value2&Param-3=Value3\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac"},
	{name: "get-vanilla-query-order-key-case", method: "GET", path: "/", query: "Param2=value2&Param1=value1", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
	{name: "get-vanilla-query-unreserved", method: "GET", path: "/", query: "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/\n-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"},
	{name: "get-vanilla-utf8-query", method: "GET", path: "/", query: "ሴ=bar", host: "example.amazonaws.com", token: "",
		headers:          []headerField{},
		canonicalRequest: "GET\n/\n%E1%88%B4=bar\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"},
	{name: "get-vanilla-with-session-token", method: "GET", path: "/", query: "", host: "example.amazonaws.com", token: "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267",
		headers:          []headerField{},
		canonicalRequest: "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267\n\nhost;x-amz-date;x-amz-security-token\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		signature:        "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"},
}

func signSuiteVector(v suiteVector) (signingStages, error) {
	return signVector(vectorRequest{akid: suiteAccessKeyID, secret: suiteSecret, token: v.token, service: "service",
		method: v.method, host: v.host, uri: string(appendURIEncoded(nil, v.path, true)), rawQuery: v.query,
		headers: v.headers, omitContentSHA256: true, at: suiteTime})
}

// vectorRequest is a test vector's request and credentials.
type vectorRequest struct {
	akid, secret, token string
	// service is the signing name; empty means s3. The region is us-east-1.
	service                     string
	method, host, uri, rawQuery string
	headers                     []headerField
	payloadHash                 string
	omitContentSHA256           bool
	at                          time.Time
}

// signVector is the one way every vector test signs: a fresh signer, the
// vector's query parsed from its raw form, every stage returned.
func signVector(v vectorRequest) (signingStages, error) {
	params, err := parseCanonicalQuery(v.rawQuery)
	if err != nil {
		return signingStages{}, err
	}
	s := &Signer{Region: "us-east-1", Service: v.service}
	in := &signingRequest{method: v.method, host: v.host, uri: v.uri, query: canonicalQuery(params),
		headers: v.headers, payloadHash: v.payloadHash, omitContentSHA256: v.omitContentSHA256}
	return s.explain(in, newCredentials(v.akid, v.secret, v.token, time.Time{}, sourceEnvironment), v.at, true), nil
}

func TestSuiteVectors(t *testing.T) {
	for _, v := range suiteVectors {
		t.Run(v.name, func(t *testing.T) {
			got, err := signSuiteVector(v)
			if err != nil {
				t.Fatal(err)
			}
			creqHash := sha256.Sum256([]byte(v.canonicalRequest))
			sts := "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n" + hex.EncodeToString(creqHash[:])
			compareStages(t, got, v.canonicalRequest, sts, v.signature)
		})
	}
}

// TestSharedSuite walks every case of ../shared/sigv4-testsuite when that
// folder exists (CI has it), honouring cases.json: "use" cases must match
// in every stage; "optional" ones that this signer supports must too;
// "skip" cases (path normalisation, which S3 must not do) are not run.
func TestSharedSuite(t *testing.T) {
	root := filepath.Join("..", "shared", "sigv4-testsuite")
	raw, err := os.ReadFile(filepath.Join(root, "cases.json"))
	if errors.Is(err, os.ErrNotExist) {
		t.Logf("%s not found: checked the built-in tables only", root)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	var index struct {
		Cases []struct {
			Suite, Case, Dir, S3 string
			SignBody             bool `json:"sign_body"`
		}
	}
	if err := json.Unmarshal(raw, &index); err != nil {
		t.Fatal(err)
	}
	checked, skipped := 0, 0
	for _, c := range index.Cases {
		if c.S3 == "skip" {
			skipped++
			continue
		}
		dir := filepath.Join(root, c.Dir)
		v, vt, reason := loadSharedCase(t, c.Suite, dir)
		if reason != "" {
			if c.S3 == "use" {
				t.Errorf("%s/%s: required case not supported: %s", c.Suite, c.Case, reason)
			}
			t.Logf("%s/%s (optional): not run: %s", c.Suite, c.Case, reason)
			skipped++
			continue
		}
		t.Run(c.Suite+"/"+c.Case, func(t *testing.T) {
			got := signLoaded(t, v, vt)
			compareStages(t, got, vt.creq, vt.sts, vt.sig)
			if vt.authz != "" && got.authorization != vt.authz {
				t.Errorf("authorization = %q, want %q", got.authorization, vt.authz)
			}
		})
		checked++
		if vt.query != nil {
			t.Run(c.Suite+"/"+c.Case+"/presigned", func(t *testing.T) {
				got := presignLoaded(v, vt.payloadHash, vt.query.expires)
				compareStages(t, got, vt.query.creq, vt.query.sts, vt.query.sig)
			})
			checked++
		}
	}
	t.Logf("checked %d signings from %s (%d cases not run)", checked, root, skipped)
	if checked < 85 {
		t.Errorf("checked only %d signings; the suite has 89 that apply to S3", checked)
	}
}

// sharedExpect is what a shared case expects of header signing, and of
// query signing when the case has it.
type sharedExpect struct {
	creq, sts, sig, authz string
	payloadHash           string
	signBody              bool
	query                 *struct {
		creq, sts, sig string
		expires        time.Duration
	}
}

// loadSharedCase parses a case directory in either suite's layout. reason
// is non-empty when the case needs something this signer does not do.
func loadSharedCase(t *testing.T, suite, dir string) (suiteVector, sharedExpect, string) {
	t.Helper()
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	base := filepath.Base(dir)
	var reqText string
	var exp sharedExpect
	token := ""
	if suite == "aws-c-auth-v4" {
		var ctx struct {
			Credentials      struct{ Token string }
			SignBody         bool `json:"sign_body"`
			OmitSessionToken bool `json:"omit_session_token"`
			Expiration       int  `json:"expiration_in_seconds"`
		}
		if err := json.Unmarshal([]byte(read("context.json")), &ctx); err != nil {
			t.Fatal(err)
		}
		if ctx.OmitSessionToken {
			return suiteVector{}, exp, "leaves the session token unsigned, which S3 signers never do"
		}
		token = ctx.Credentials.Token
		reqText = read("request.txt")
		exp.creq, exp.sts, exp.sig = read("header-canonical-request.txt"), read("header-string-to-sign.txt"), read("header-signature.txt")
		exp.signBody = ctx.SignBody
		exp.query = &struct {
			creq, sts, sig string
			expires        time.Duration
		}{read("query-canonical-request.txt"), read("query-string-to-sign.txt"), read("query-signature.txt"), time.Duration(ctx.Expiration) * time.Second}
	} else {
		reqText = read(base + ".req")
		exp.creq, exp.sts, exp.authz = read(base+".creq"), read(base+".sts"), read(base+".authz")
		_, exp.sig, _ = strings.Cut(exp.authz, "Signature=")
		if strings.Contains(dir, "post-sts-token") {
			token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
			if strings.Contains(base, "after") {
				return suiteVector{}, exp, "leaves the session token unsigned, which S3 signers never do"
			}
		}
		if base == "get-vanilla-with-session-token" {
			token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"
		}
	}
	v, body := parseSuiteRequest(reqText)
	v.name, v.token = base, token
	if body != "" {
		h := sha256.Sum256([]byte(body))
		exp.payloadHash = hex.EncodeToString(h[:])
	}
	return v, exp, ""
}

// parseSuiteRequest parses "METHOD target HTTP/1.1", header lines (folded
// continuation lines are unfolded with one space) and an optional body.
// Host becomes v.host and X-Amz-Date is dropped: the signer adds it.
func parseSuiteRequest(text string) (suiteVector, string) {
	text = strings.ReplaceAll(text, "\r\n", "\n")
	head, body, _ := strings.Cut(text, "\n\n")
	lines := strings.Split(strings.TrimRight(head, "\n"), "\n")
	var v suiteVector
	first := lines[0]
	v.method, _, _ = strings.Cut(first, " ")
	target := first[len(v.method)+1 : strings.LastIndex(first, " HTTP/")]
	v.path, v.query, _ = strings.Cut(target, "?")
	for _, l := range lines[1:] {
		if l == "" {
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			last := &v.headers[len(v.headers)-1]
			last.value += " " + strings.TrimSpace(l)
			continue
		}
		name, value, _ := strings.Cut(l, ":")
		switch strings.ToLower(name) {
		case "host":
			v.host = value
		case "x-amz-date", "x-amz-security-token": // the signer adds both
		default:
			v.headers = append(v.headers, headerField{name, value})
		}
	}
	return v, body
}

func signLoaded(t *testing.T, v suiteVector, exp sharedExpect) signingStages {
	t.Helper()
	got, err := signVector(vectorRequest{akid: suiteAccessKeyID, secret: suiteSecret, token: v.token, service: "service",
		method: v.method, host: v.host, uri: string(appendURIEncoded(nil, v.path, true)), rawQuery: v.query,
		headers: v.headers, payloadHash: exp.payloadHash, omitContentSHA256: !exp.signBody, at: suiteTime})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func presignLoaded(v suiteVector, payloadHash string, expires time.Duration) signingStages {
	params, _ := parseCanonicalQuery(v.query)
	creds := newCredentials(suiteAccessKeyID, suiteSecret, v.token, time.Time{}, sourceEnvironment)
	s := &Signer{Region: "us-east-1", Service: "service"}
	in := &signingRequest{method: v.method, host: v.host, uri: string(appendURIEncoded(nil, v.path, true)),
		headers: v.headers, payloadHash: payloadHash}
	if in.payloadHash == "" { // presigning for S3 would use UNSIGNED-PAYLOAD; the suite does not
		in.payloadHash = emptyPayloadHash
	}
	return s.explainPresign(in, params, creds, suiteTime, expires).stages
}

// TestSignHeaders checks what Sign adds to an outbound request.
func TestSignHeaders(t *testing.T) {
	s := &Signer{Region: "us-east-1"}
	creds := newCredentials("ASIAEXAMPLE", docsSecret, "session-token", time.Time{}, sourceIMDS)
	h := http.Header{"Range": {"bytes=0-9"}, headerSecurityToken: {"stale"}}
	in := &signingRequest{method: "GET", host: docsHost, uri: "/test.txt"}
	s.Sign(h, in, creds, docsTime)
	want := s.explain(in, creds, docsTime, true)
	if got := h.Get(headerAuthorization); got != want.authorization {
		t.Errorf("Authorization = %q, want %q", got, want.authorization)
	}
	if !strings.Contains(want.authorization, "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,") {
		t.Errorf("Authorization %q: want exactly host;x-amz-content-sha256;x-amz-date;x-amz-security-token signed (Range unsigned)", want.authorization)
	}
	for name, value := range map[string]string{headerAmzDate: "20130524T000000Z", headerContentSHA256: emptyPayloadHash, headerSecurityToken: "session-token", "Range": "bytes=0-9"} {
		if got := h.Values(name); len(got) != 1 || got[0] != value {
			t.Errorf("%s = %q, want [%q]", name, got, value)
		}
	}
	s.Sign(h, in, newCredentials("AKIAEXAMPLE", docsSecret, "", time.Time{}, sourceEnvironment), docsTime)
	if _, ok := h[headerSecurityToken]; ok {
		t.Error("X-Amz-Security-Token kept after signing with credentials that have no token")
	}
}

// TestSigningKeyCache: one signer reused across days and secrets signs
// exactly as a fresh signer would, and a repeated signing derives no key
// (it allocates only its two header strings).
func TestSigningKeyCache(t *testing.T) {
	s := &Signer{Region: "us-east-1"}
	in := &signingRequest{method: "GET", host: "h", uri: "/k"}
	day1, day2 := docsTime, docsTime.Add(24*time.Hour)
	for _, step := range []struct {
		secret string
		at     time.Time
	}{{"secret-1", day1}, {"secret-1", day1}, {"secret-1", day2}, {"secret-2", day2}, {"secret-1", day1}} {
		creds := newCredentials("AKID", step.secret, "", time.Time{}, sourceEnvironment)
		fresh := (&Signer{Region: "us-east-1"}).explain(in, creds, step.at, true).signature
		if got := s.explain(in, creds, step.at, true).signature; got != fresh {
			t.Errorf("reused signer, %s on %s: %s, a fresh signer: %s", step.secret, step.at.Format("2006-01-02"), got, fresh)
		}
	}
	creds := newCredentials("AKID", "secret-1", "", time.Time{}, sourceEnvironment)
	h := http.Header{}
	s.Sign(h, in, creds, day1)
	// A signature allocates its two header strings (a little more under
	// -race, where sync.Pool drops buffers at random); deriving a key costs
	// over ten more.
	reused := testing.AllocsPerRun(100, func() { s.Sign(h, in, creds, day1) })
	derived := testing.AllocsPerRun(20, func() { (&Signer{Region: "us-east-1"}).Sign(h, in, creds, day1) })
	if reused >= 5 || derived-reused < 8 {
		t.Errorf("signing again with the same secret and day: %v allocations; with a fresh signer: %v; want the key reused", reused, derived)
	}
	// Concurrent signers with rotating secrets stay correct (run with -race).
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			secret := []string{"a", "b"}[i%2]
			creds := newCredentials("AKID", secret, "", time.Time{}, sourceEnvironment)
			in := &signingRequest{method: "GET", host: "h", uri: "/k"}
			want := (&Signer{Region: "us-east-1"}).explain(in, creds, docsTime, true).signature
			for range 200 {
				if got := s.explain(in, creds, docsTime, true).signature; got != want {
					t.Errorf("concurrent signature = %s, want %s", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestSignedBytesOnTheWire checks that net/http sends the request target
// exactly as signed, for keys whose escaping peers got wrong.
func TestSignedBytesOnTheWire(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.RequestURI
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, key := range []string{"a b+c", "lit%2F/x", "(x)!*'", "é中😀", "=&;,:@$#?", "/leading", "a//b"} {
		uri := "/bucket" + canonicalURI(key)
		req := &http.Request{Method: "GET", URL: upstreamURL("http", host, uri, "versionId=a%2Fb"), Header: http.Header{}, Host: host}
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := uri + "?versionId=a%2Fb"; <-got != want {
			t.Errorf("key %q: server saw a different target than %q", key, want)
		}
		vuri := canonicalURI(key) // virtual-hosted: the key alone
		req = &http.Request{Method: "GET", URL: upstreamURL("http", host, vuri, ""), Header: http.Header{}, Host: host}
		resp, err = http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if seen := <-got; seen != vuri && seen != "http://"+host+vuri {
			t.Errorf("key %q virtual-hosted: server saw %q, want %q", key, seen, vuri)
		}
	}
}

func isUpperHex(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' }

// BenchmarkSign signs a GET for a ~60-byte key with a session token and a
// Range header, as the proxy does for every upstream attempt. The token is
// 680 bytes, shorter than most real role tokens (about 1 KB); its hashing
// dominates the cost.
func BenchmarkSign(b *testing.B) {
	benchmarkSign(b, strings.Repeat("IQoJb3JpZ2luX2VjE", 40))
}

// BenchmarkSignShortToken is BenchmarkSign with a 64-byte token, to show
// the fixed cost apart from hashing the token.
func BenchmarkSignShortToken(b *testing.B) {
	benchmarkSign(b, strings.Repeat("IQoJb3Jp", 8))
}

func benchmarkSign(b *testing.B, token string) {
	s := &Signer{Region: "eu-west-1"}
	creds := newCredentials("ASIAY34FZKBOKMUTVV7A", docsSecret, token, time.Time{}, sourceIMDS)
	in := &signingRequest{method: "GET", host: "media-bucket.s3.eu-west-1.amazonaws.com",
		uri: canonicalURI("videos/2026/11/some-show/episode-01/video_1080p_h264.mp4")}
	h := make(http.Header, 8)
	h["Range"] = []string{"bytes=4096-262143"}
	now := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	for b.Loop() {
		s.Sign(h, in, creds, now)
	}
}

// BenchmarkSignFloor is the least any SigV4 signer must do for the request
// of BenchmarkSign: SHA-256 of the same canonical request, then the HMAC of
// the string to sign with a cached key (pad states included).
// BenchmarkSign/BenchmarkSignFloor is our overhead ratio.
func BenchmarkSignFloor(b *testing.B) {
	s := &Signer{Region: "eu-west-1"}
	creds := newCredentials("ASIAY34FZKBOKMUTVV7A", docsSecret, strings.Repeat("IQoJb3JpZ2luX2VjE", 40), time.Time{}, sourceIMDS)
	in := &signingRequest{method: "GET", host: "media-bucket.s3.eu-west-1.amazonaws.com",
		uri: canonicalURI("videos/2026/11/some-show/episode-01/video_1080p_h264.mp4")}
	sig := s.explain(in, creds, time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC), true)
	creq, sts := []byte(sig.canonicalRequest), []byte(sig.stringToSign)
	key := s.key(docsSecret, "20261127")
	buf := s.getBuf()
	b.ReportAllocs()
	for b.Loop() {
		h := sha256.Sum256(creq)
		hex.Encode(sts[len(sts)-2*sha256.Size:], h[:])
		buf.hmac(key, sts)
	}
}

// TestSignManyHeaders: more signed headers than fit on the stack are all
// signed; the canonical request is checked against a plain-string build.
func TestSignManyHeaders(t *testing.T) {
	s := &Signer{Region: "us-east-1"}
	creds := newCredentials(docsAccessKeyID, docsSecret, "", time.Time{}, sourceEnvironment)
	in := &signingRequest{method: "GET", host: docsHost, uri: "/test.txt"}
	var lines, names []string
	for i := range 3 * inlineSignedHeaders {
		name := fmt.Sprintf("x-amz-meta-h%02d", i)
		in.headers = append(in.headers, headerField{name, fmt.Sprintf(" value  %d ", i)})
		lines = append(lines, fmt.Sprintf("%s:value %d", name, i))
		names = append(names, name)
	}
	lines = append(lines, "host:"+docsHost, "x-amz-content-sha256:"+emptyPayloadHash, "x-amz-date:20130524T000000Z")
	names = append(names, "host", "x-amz-content-sha256", "x-amz-date")
	slices.Sort(lines)
	slices.Sort(names)
	want := strings.Join([]string{"GET", "/test.txt", "", strings.Join(lines, "\n"), "", strings.Join(names, ";"), emptyPayloadHash}, "\n")
	got := s.explain(in, creds, docsTime, true)
	if got.canonicalRequest != want {
		t.Errorf("canonical request with %d headers:\n%s\nwant:\n%s", len(in.headers), got.canonicalRequest, want)
	}
	if got.signedHeaders != strings.Join(names, ";") {
		t.Errorf("SignedHeaders = %s", got.signedHeaders)
	}
}
