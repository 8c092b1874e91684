package qemuvmm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// The request bodies the API accepts, decoded strictly as Firecracker's
// serde(deny_unknown_fields) does. Pointers tell a missing field from a
// zero one, so required fields can be checked.

type loggerReq struct {
	LogPath       *string `json:"log_path"`
	Level         *string `json:"level"`
	ShowLevel     *bool   `json:"show_level"`
	ShowLogOrigin *bool   `json:"show_log_origin"`
	Module        *string `json:"module"`
}

type metricsReq struct {
	MetricsPath *string `json:"metrics_path"`
}

type machineReq struct {
	VCPUCount       *int    `json:"vcpu_count"`
	MemSizeMiB      *int    `json:"mem_size_mib"`
	SMT             *bool   `json:"smt"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	CPUTemplate     *string `json:"cpu_template"`
	HugePages       *string `json:"huge_pages"`
}

type bootReq struct {
	KernelImagePath *string `json:"kernel_image_path"`
	BootArgs        *string `json:"boot_args"`
	InitrdPath      *string `json:"initrd_path"`
}

type driveReq struct {
	DriveID      *string         `json:"drive_id"`
	PathOnHost   *string         `json:"path_on_host"`
	IsRootDevice *bool           `json:"is_root_device"`
	IsReadOnly   *bool           `json:"is_read_only"`
	PartUUID     *string         `json:"partuuid"`
	CacheType    *string         `json:"cache_type"`
	IOEngine     *string         `json:"io_engine"`
	RateLimiter  json.RawMessage `json:"rate_limiter"`
	Socket       *string         `json:"socket"`
}

type nicReq struct {
	IfaceID       *string         `json:"iface_id"`
	HostDevName   *string         `json:"host_dev_name"`
	GuestMAC      *string         `json:"guest_mac"`
	MTU           *int            `json:"mtu"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter"`
}

type vsockReq struct {
	GuestCID *int64  `json:"guest_cid"`
	UDSPath  *string `json:"uds_path"`
	VsockID  *string `json:"vsock_id"`
}

type actionReq struct {
	ActionType *string `json:"action_type"`
}

type vmReq struct {
	State *string `json:"state"`
}

// fault is an error whose text is the fault_message of a 400 reply.
type fault struct{ msg string }

func (f *fault) Error() string { return f.msg }

func faultf(format string, args ...any) error { return &fault{msg: fmt.Sprintf(format, args...)} }

var unknownFieldRe = regexp.MustCompile(`^json: unknown field "(.*)"$`)

// decodeStrict decodes one JSON object into v, refusing unknown fields and
// anything after the object, like serde_json::from_slice with
// deny_unknown_fields.
func decodeStrict(body []byte, v any) error {
	bad := func(detail string) error {
		return faultf("An error occurred when deserializing the json body of a request: %s.", detail)
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return bad("expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if m := unknownFieldRe.FindStringSubmatch(err.Error()); m != nil {
			return bad(fmt.Sprintf("unknown field `%s`", m[1]))
		}
		return bad(strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return bad("trailing characters")
	}
	return nil
}

// missing is the fault for a required field left out.
func missing(field string) error {
	return faultf("An error occurred when deserializing the json body of a request: missing field `%s`.", field)
}

var (
	resourceIDRe = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	macRe        = regexp.MustCompile(`^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$`)
)

// checkPathID checks a {drive_id} or {iface_id} path segment and that the
// body names the same id.
func checkPathID(kind, pathID string, bodyID *string, field string) error {
	if pathID == "" {
		return faultf("Missing %s id.", kind)
	}
	if !resourceIDRe.MatchString(pathID) {
		return faultf("Invalid %s id %q: only ASCII letters, digits and '_' are allowed.", kind, pathID)
	}
	if bodyID == nil {
		return missing(field)
	}
	if *bodyID != pathID {
		return faultf("The id from the path does not match the id from the body!")
	}
	return nil
}

// rawSet reports whether an optional JSON value was given (and not null).
func rawSet(r json.RawMessage) bool {
	return len(r) > 0 && string(bytes.TrimSpace(r)) != "null"
}
