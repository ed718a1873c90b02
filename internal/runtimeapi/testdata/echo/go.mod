// The echo function is its own module so that the ebb module need not list
// aws-lambda-go (go mod tidy ignores testdata and would drop it).
module echo

go 1.26

require github.com/aws/aws-lambda-go v1.55.1
