module s3-helper

go 1.26
