package main

// What S3's answers mean for the proxy: the error code and region read
// (bounded) from an error body, which statuses are worth another attempt,
// which codes mean the credentials themselves are dead, and which mean the
// bucket lives in another region.

import (
	"io"
	"net/http"
)

const (
	// maxErrorBodyBytes bounds how much of an S3 error body is read to find
	// its <Code>.
	maxErrorBodyBytes = 8 << 10
)

// credentialsRejected reports S3 error codes that mean the credential set
// itself is no longer valid
// (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
func credentialsRejected(code string) bool {
	switch code {
	case "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "InvalidAccessKeyId":
		return true
	}
	return false
}

// retryableStatus reports S3 answers worth another attempt: internal
// errors, SlowDown (503) and gateway failures.
func retryableStatus(status int) bool {
	switch status {
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// s3ErrorDetails is what s3-helper takes from an S3 error answer: plain
// words only, never arbitrary bytes.
type s3ErrorDetails struct {
	code string
	// region is the bucket's region when S3 names it: the
	// x-amz-bucket-region header or the body's <Region>, which is what
	// botocore's region redirector reads.
	region string
}

// readS3Error reads an S3 XML error body (bounded) and closes it. The body
// itself never reaches the client.
func readS3Error(resp *http.Response) s3ErrorDetails {
	defer resp.Body.Close()
	var d s3ErrorDetails
	if resp.StatusCode < 300 {
		return d
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBodyBytes))
	d.code = xmlWord(body, "Code")
	d.region = plainWord([]byte(resp.Header.Get("X-Amz-Bucket-Region")))
	if d.region == "" {
		d.region = xmlWord(body, "Region")
	}
	return d
}

// regionHint names the fix for an answer that says the bucket is in
// another region, or "" when it does not.
func regionHint(status int, d s3ErrorDetails) string {
	redirect := status == http.StatusMovedPermanently || status == http.StatusTemporaryRedirect
	if !redirect && d.code != "AuthorizationHeaderMalformed" && d.code != "PermanentRedirect" && d.code != "IllegalLocationConstraintException" {
		return ""
	}
	if d.region != "" {
		return "the bucket is in " + d.region + " (S3 says so): set -region " + d.region
	}
	if redirect {
		return "the bucket is in another region than -region, or -endpoint is wrong"
	}
	return "S3 refused the signing region: -region is not the bucket's region"
}
