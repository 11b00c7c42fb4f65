package image_test

import (
	"io"
	"log"
	"net/http"
)

type httpHandler = http.Handler

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }
