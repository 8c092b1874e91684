package api

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/model"

	"github.com/getkin/kin-openapi/openapi3"
)

// contractBackend answers every Backend method with a value whose every
// field is set (guided by the document's schema, so enums get one of
// their values), or fails with the code the test set. A field the
// document lacks is set too, and its answer fails validation.
type contractBackend struct {
	doc *openapi3.T
	t   *testing.T

	mu   sync.Mutex
	fail string
}

func (b *contractBackend) setFail(code string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fail = code
}

func (b *contractBackend) err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail == "" {
		return nil
	}
	return model.Errorf(b.fail, "the contract test fails this with %s", b.fail)
}

// full returns a T with every field set, following the schema name.
func full[T any](b *contractBackend, schema string) T {
	var v T
	var s *openapi3.Schema
	if b.doc != nil {
		if ref, ok := b.doc.Components.Schemas[schema]; ok {
			s = ref.Value
		} else {
			b.t.Errorf("the contract backend fills a %s, which openapi.json lacks", schema)
		}
	}
	fill(reflect.ValueOf(&v).Elem(), s)
	return v
}

// resolve follows allOf wrappers (a $ref with a description).
func resolve(s *openapi3.Schema) *openapi3.Schema {
	for s != nil && len(s.AllOf) == 1 && len(s.Properties) == 0 {
		s = s.AllOf[0].Value
	}
	return s
}

var fillTime = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// fill sets every field of v; s, when known, chooses enum values.
func fill(v reflect.Value, s *openapi3.Schema) {
	s = resolve(s)
	if v.Type() == reflect.TypeOf(time.Time{}) {
		v.Set(reflect.ValueOf(fillTime))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), s)
	case reflect.String:
		val := "x"
		if s != nil {
			for _, e := range s.Enum {
				if str, ok := e.(string); ok && str != "" {
					val = str
					break
				}
			}
		}
		v.SetString(val)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(1)
	case reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Slice:
		var item *openapi3.Schema
		if s != nil && s.Items != nil {
			item = s.Items.Value
		}
		sl := reflect.MakeSlice(v.Type(), 1, 1)
		fill(sl.Index(0), item)
		v.Set(sl)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		m.SetMapIndex(reflect.ValueOf("key").Convert(v.Type().Key()), reflect.ValueOf("value"))
		v.Set(m)
	case reflect.Interface:
		v.Set(reflect.ValueOf("any"))
	case reflect.Struct:
		fillStruct(v, s)
	}
}

func fillStruct(v reflect.Value, s *openapi3.Schema) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			fillStruct(v.Field(i), s)
			continue
		}
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		var ps *openapi3.Schema
		if s != nil {
			if p, ok := s.Properties[name]; ok {
				ps = p.Value
			}
		}
		fill(v.Field(i), ps)
	}
}

func (b *contractBackend) Version(context.Context) VersionInfo {
	return full[VersionInfo](b, "VersionInfo")
}
func (b *contractBackend) Doctor(context.Context) []DoctorCheck {
	return []DoctorCheck{full[DoctorCheck](b, "DoctorCheck")}
}

func (b *contractBackend) ListImages(context.Context) ([]model.Image, error) {
	return []model.Image{full[model.Image](b, "Image")}, b.err()
}
func (b *contractBackend) GetImage(context.Context, string) (ImageDetail, error) {
	return full[ImageDetail](b, "ImageDetail"), b.err()
}
func (b *contractBackend) RegisterImage(context.Context, ImageRegisterRequest) (ImageRegisterResponse, error) {
	return full[ImageRegisterResponse](b, "ImageRegisterResponse"), b.err()
}

// streamOp reports one progress event, then the result or the failure.
func streamOp[T any](b *contractBackend, p ProgressFunc, schema string) (T, error) {
	p(full[Progress](b, "Progress"))
	if err := b.err(); err != nil {
		var zero T
		return zero, err
	}
	return full[T](b, schema), nil
}

func (b *contractBackend) BuildImage(_ context.Context, _ ImageBuildRequest, p ProgressFunc) (model.Image, error) {
	return streamOp[model.Image](b, p, "Image")
}
func (b *contractBackend) DeleteImage(context.Context, string) error { return b.err() }
func (b *contractBackend) WarmImage(_ context.Context, _ string, _ ImageWarmRequest, p ProgressFunc) (WarmState, error) {
	return streamOp[WarmState](b, p, "WarmState")
}
func (b *contractBackend) DropWarm(context.Context, string) error { return b.err() }
func (b *contractBackend) ListKernels(context.Context) ([]Kernel, error) {
	return []Kernel{full[Kernel](b, "Kernel")}, b.err()
}
func (b *contractBackend) BuildKernel(_ context.Context, _ KernelBuildRequest, p ProgressFunc) (Kernel, error) {
	return streamOp[Kernel](b, p, "Kernel")
}
func (b *contractBackend) ListVMs(context.Context) ([]VMView, error) {
	return []VMView{full[VMView](b, "VM")}, b.err()
}
func (b *contractBackend) GetVM(context.Context, string) (VMView, error) {
	v := full[VMView](b, "VM")
	v.State = model.VMStateRunning
	return v, b.err()
}
func (b *contractBackend) CreateVM(_ context.Context, _ model.VMCreateRequest, p ProgressFunc) (VMView, error) {
	return streamOp[VMView](b, p, "VM")
}
func (b *contractBackend) SetVM(context.Context, model.VMSetRequest) (VMView, error) {
	return full[VMView](b, "VM"), b.err()
}
func (b *contractBackend) DeleteVM(_ context.Context, _ string, _ VMDeleteOptions, p ProgressFunc) error {
	p(full[Progress](b, "Progress"))
	return b.err()
}
func (b *contractBackend) StartVM(_ context.Context, _ string, p ProgressFunc) (VMView, error) {
	return streamOp[VMView](b, p, "VM")
}
func (b *contractBackend) StopVM(_ context.Context, _ string, p ProgressFunc) (VMView, error) {
	return streamOp[VMView](b, p, "VM")
}
func (b *contractBackend) KillVM(context.Context, string) (VMView, error) {
	return full[VMView](b, "VM"), b.err()
}
func (b *contractBackend) SuspendVM(_ context.Context, _ string, p ProgressFunc) (VMView, error) {
	return streamOp[VMView](b, p, "VM")
}
func (b *contractBackend) ForkVM(_ context.Context, _ string, _ model.VMForkRequest, p ProgressFunc) ([]VMView, error) {
	p(full[Progress](b, "Progress"))
	if err := b.err(); err != nil {
		return nil, err
	}
	return []VMView{full[VMView](b, "VM")}, nil
}
func (b *contractBackend) RestartVM(_ context.Context, _ string, p ProgressFunc) (VMView, error) {
	return streamOp[VMView](b, p, "VM")
}
func (b *contractBackend) ResetSystem(context.Context, string) (VMView, error) {
	return full[VMView](b, "VM"), b.err()
}
func (b *contractBackend) VMStats(context.Context, string) (model.VMStats, error) {
	return full[model.VMStats](b, "VMStats"), b.err()
}
func (b *contractBackend) VMLogs(_ context.Context, _ string, _ LogsOptions, w io.Writer) error {
	_, err := io.WriteString(w, "console line\n")
	return err
}

// Connect answers with an echo server.
func (b *contractBackend) Connect(context.Context, string, int) (net.Conn, error) {
	if err := b.err(); err != nil {
		return nil, err
	}
	// A TCP echo server, so the stream half-closes as a guest's does.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	return net.Dial("tcp", ln.Addr().String())
}

func (b *contractBackend) Hold(context.Context, string) (func(), error) {
	if err := b.err(); err != nil {
		return nil, err
	}
	return func() {}, nil
}

// upload takes the client's payload, then answers.
func upload[T any](b *contractBackend, open OpenFunc, p ProgressFunc, schema string) (T, error) {
	var zero T
	if err := b.err(); err != nil {
		return zero, err
	}
	r, err := open()
	if err != nil {
		return zero, err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return zero, err
	}
	if p != nil {
		p(full[Progress](b, "Progress"))
	}
	return full[T](b, schema), nil
}

func (b *contractBackend) PrepareWorkspace(_ context.Context, _ string, _ WorkspacePrepareRequest, open OpenFunc, p ProgressFunc) (model.Workspace, error) {
	return upload[model.Workspace](b, open, p, "Workspace")
}
func (b *contractBackend) ListWorkspaces(context.Context) ([]model.Workspace, error) {
	return []model.Workspace{full[model.Workspace](b, "Workspace")}, b.err()
}
func (b *contractBackend) GetWorkspace(context.Context, string, string) (model.Workspace, error) {
	return full[model.Workspace](b, "Workspace"), b.err()
}
func (b *contractBackend) CaptureWorkspace(_ context.Context, _, _ string, p ProgressFunc) (model.Workspace, error) {
	return streamOp[model.Workspace](b, p, "Workspace")
}
func (b *contractBackend) OpenWorkspaceBundle(context.Context, string, string) (io.ReadCloser, int64, error) {
	if err := b.err(); err != nil {
		return nil, 0, err
	}
	return io.NopCloser(strings.NewReader("bundle")), 6, nil
}
func (b *contractBackend) MarkWorkspaceFetched(context.Context, string, WorkspaceFetchedRequest) (model.Workspace, error) {
	return full[model.Workspace](b, "Workspace"), b.err()
}
func (b *contractBackend) WorkspaceGit(_ context.Context, _ string, _ WorkspaceGitRequest, w io.Writer) error {
	if err := b.err(); err != nil {
		return err
	}
	_, err := io.WriteString(w, "commit abc\n")
	return err
}
func (b *contractBackend) FileSyncEntries(context.Context) ([]model.FileSyncEntry, error) {
	return []model.FileSyncEntry{full[model.FileSyncEntry](b, "FileSyncEntry")}, b.err()
}
func (b *contractBackend) UploadFileSync(_ context.Context, _ string, open OpenFunc) (FileSyncUpload, error) {
	return upload[FileSyncUpload](b, open, nil, "FileSyncUpload")
}
func (b *contractBackend) UploadImage(_ context.Context, _ ImageUploadRequest, open OpenFunc, p ProgressFunc) (ImageRegisterResponse, error) {
	return upload[ImageRegisterResponse](b, open, p, "ImageRegisterResponse")
}
func (b *contractBackend) ImportImage(_ context.Context, _ ImageImportRequest, open OpenFunc, p ProgressFunc) (model.Image, error) {
	return upload[model.Image](b, open, p, "Image")
}
func (b *contractBackend) BuildImageUpload(_ context.Context, _ ImageBuildRequest, open OpenFunc, p ProgressFunc) (model.Image, error) {
	return upload[model.Image](b, open, p, "Image")
}

// TestFillSetsEveryField: the filler leaves no field at its zero value,
// so no field can hide from the contract test.
func TestFillSetsEveryField(t *testing.T) {
	v := full[VMView](&contractBackend{t: t}, "VM")
	raw, _ := json.Marshal(v)
	var m map[string]any
	json.Unmarshal(raw, &m)
	var zero func(path string, x any)
	zero = func(path string, x any) {
		switch x := x.(type) {
		case map[string]any:
			for k, v := range x {
				zero(path+"."+k, v)
			}
		case nil:
			t.Errorf("%s is null", path)
		}
	}
	zero("vm", m)
	if _, ok := m["pid"]; !ok {
		t.Error("omitempty fields are not filled")
	}
}
