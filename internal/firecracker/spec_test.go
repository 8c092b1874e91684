package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
)

// strictDefinitions are the spec definitions whose Rust counterparts carry
// serde(deny_unknown_fields) in Firecracker v1.16.1 (vmm_config/*.rs,
// request/*.rs): Firecracker answers 400 to an unknown field in them. The
// swagger file does not say so (it leaves additionalProperties open), so
// the tests close them to make the spec as strict as the server.
var strictDefinitions = []string{
	"BootSource", "Drive", "InstanceActionInfo", "Logger", "MachineConfiguration",
	"Metrics", "NetworkInterface", "RateLimiter", "TokenBucket", "Vm", "Vsock",
	"SnapshotCreateParams", "SnapshotLoadParams", "MemoryBackend",
	"PartialDrive", "PartialNetworkInterface", "Balloon", "BalloonUpdate",
	"BalloonStatsUpdate", "MmdsConfig",
}

// specValidator checks requests against Firecracker's official API spec.
type specValidator struct {
	doc *openapi3.T
}

var (
	specOnce sync.Once
	spec     *specValidator
	specErr  error
)

// loadSpec parses testdata/firecracker.yaml (swagger 2.0), converts it to
// OpenAPI 3 and closes the strict definitions.
func loadSpec(t testing.TB) *specValidator {
	t.Helper()
	specOnce.Do(func() {
		raw, err := os.ReadFile("testdata/firecracker.yaml")
		if err != nil {
			specErr = err
			return
		}
		var doc2 openapi2.T
		if err := openapi2.UnmarshalFromData(raw, &doc2); err != nil {
			specErr = fmt.Errorf("parse swagger: %w", err)
			return
		}
		doc3, err := openapi2conv.ToV3(&doc2)
		if err != nil {
			specErr = fmt.Errorf("convert to openapi 3: %w", err)
			return
		}
		for _, name := range strictDefinitions {
			ref, ok := doc3.Components.Schemas[name]
			if !ok || ref.Value == nil {
				specErr = fmt.Errorf("spec has no definition %s", name)
				return
			}
			ref.Value.AdditionalProperties = openapi3.AdditionalProperties{Has: openapi3.Ptr(false)}
		}
		spec = &specValidator{doc: doc3}
	})
	if specErr != nil {
		t.Fatalf("load firecracker spec: %v", specErr)
	}
	return spec
}

// operation finds the spec operation for method and a concrete path, and
// the path parameters it binds.
func (v *specValidator) operation(method, path string) (*openapi3.Operation, map[string]string, error) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for tmpl, item := range v.doc.Paths.Map() {
		tsegs := strings.Split(strings.Trim(tmpl, "/"), "/")
		if len(tsegs) != len(segs) {
			continue
		}
		params := map[string]string{}
		match := true
		for i, ts := range tsegs {
			if strings.HasPrefix(ts, "{") && strings.HasSuffix(ts, "}") && segs[i] != "" {
				params[ts[1:len(ts)-1]] = segs[i]
			} else if ts != segs[i] {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		op := item.GetOperation(method)
		if op == nil {
			return nil, nil, fmt.Errorf("spec: %s %s: method not in spec", method, path)
		}
		return op, params, nil
	}
	return nil, nil, fmt.Errorf("spec: %s %s: path not in spec", method, path)
}

// Check validates one request against the spec: the operation must exist,
// a body is required exactly when the operation takes one, and the body
// must satisfy the operation's schema.
func (v *specValidator) Check(method, path string, body []byte) error {
	op, _, err := v.operation(method, path)
	if err != nil {
		return err
	}
	if op.RequestBody == nil || op.RequestBody.Value == nil {
		if len(body) != 0 {
			return fmt.Errorf("spec: %s %s takes no body", method, path)
		}
		return nil
	}
	if len(body) == 0 {
		if op.RequestBody.Value.Required {
			return fmt.Errorf("spec: %s %s needs a body", method, path)
		}
		return nil
	}
	mt := op.RequestBody.Value.Content.Get("application/json")
	if mt == nil || mt.Schema == nil || mt.Schema.Value == nil {
		return fmt.Errorf("spec: %s %s has no application/json schema", method, path)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var val any
	if err := dec.Decode(&val); err != nil {
		return fmt.Errorf("spec: %s %s: body is not JSON: %w", method, path, err)
	}
	val = numbersToFloat(val)
	if err := mt.Schema.Value.VisitJSON(val, openapi3.MultiErrors()); err != nil {
		return fmt.Errorf("spec: %s %s: %w", method, path, err)
	}
	return nil
}

// CheckReply validates a reply body against the operation's response
// schema for status (or its default response).
func (v *specValidator) CheckReply(method, path string, status int, body []byte) error {
	op, _, err := v.operation(method, path)
	if err != nil {
		return err
	}
	resp := op.Responses.Status(status)
	if resp == nil {
		resp = op.Responses.Default()
	}
	if resp == nil || resp.Value == nil {
		return fmt.Errorf("spec: %s %s: no response %d", method, path, status)
	}
	mt := resp.Value.Content.Get("application/json")
	if mt == nil || mt.Schema == nil || mt.Schema.Value == nil {
		return fmt.Errorf("spec: %s %s: response %d has no body, got %s", method, path, status, body)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var val any
	if err := dec.Decode(&val); err != nil {
		return fmt.Errorf("spec: %s %s: reply is not JSON: %w", method, path, err)
	}
	if err := mt.Schema.Value.VisitJSON(stripNulls(numbersToFloat(val)), openapi3.MultiErrors()); err != nil {
		return fmt.Errorf("spec: %s %s: reply: %w", method, path, err)
	}
	return nil
}

// stripNulls drops null members of objects: Firecracker serializes an
// absent optional part of a reply as null (serde's Option without
// skip_serializing_if), which the swagger file does not declare nullable.
func stripNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if e == nil {
				delete(x, k)
			} else {
				x[k] = stripNulls(e)
			}
		}
	case []any:
		for i, e := range x {
			x[i] = stripNulls(e)
		}
	}
	return v
}

// numbersToFloat turns json.Number values into float64, which is what the
// schema validator expects.
func numbersToFloat(v any) any {
	switch x := v.(type) {
	case json.Number:
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbersToFloat(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbersToFloat(e)
		}
	}
	return v
}

// errSpec matches any refusal by the spec validator in tests.
var errSpec = errors.New("refused by spec")

// newCheckedClient returns a client that refuses, before sending, any
// request the spec refuses. Every test client is made this way.
func newCheckedClient(t testing.TB, sock string) *Client {
	t.Helper()
	v := loadSpec(t)
	c := NewClient(sock)
	c.Check = func(method, path string, body []byte) error {
		if err := v.Check(method, path, body); err != nil {
			return fmt.Errorf("%w: %w", errSpec, err)
		}
		return nil
	}
	c.CheckReply = func(method, path string, status int, body []byte) error {
		if err := v.CheckReply(method, path, status, body); err != nil {
			return fmt.Errorf("%w: %w", errSpec, err)
		}
		return nil
	}
	return c
}
