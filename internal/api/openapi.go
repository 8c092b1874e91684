package api

import (
	"context"
	_ "embed"
	"net/http"
)

// openAPIDoc is the OpenAPI 3 description of /v1: every route, body,
// error code, stream and upgrade. contract_test.go checks the server's
// routes, the client's requests and the server's answers against it.
//
//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the OpenAPI 3 description of the API.
func OpenAPI() []byte { return append([]byte(nil), openAPIDoc...) }

func (s *Server) openAPIRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+Prefix+"/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write(openAPIDoc)
	})
}

// OpenAPI fetches the daemon's own description of its API.
func (c *Client) OpenAPI(ctx context.Context) ([]byte, error) {
	var raw rawJSON
	err := c.call(ctx, "GET", "/openapi.json", nil, &raw)
	return raw, err
}

// rawJSON keeps a JSON reply as it came.
type rawJSON []byte

func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}
