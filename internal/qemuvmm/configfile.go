package qemuvmm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// configFileSections are the sections of Firecracker's --config-file
// JSON, in the order they are applied, with the endpoint each is PUT to;
// drives and network-interfaces are lists PUT one by one.
var configFileSections = []struct{ key, path string }{
	{"logger", "/logger"},
	{"metrics", "/metrics"},
	{"machine-config", "/machine-config"},
	{"boot-source", "/boot-source"},
	{"drives", "/drives/"},
	{"network-interfaces", "/network-interfaces/"},
	{"vsock", "/vsock"},
	{"balloon", "/balloon"},
	{"entropy", "/entropy"},
	{"mmds-config", "/mmds/config"},
	{"cpu-config", "/cpu-config"},
	{"serial", "/serial"},
	{"memory-hotplug", "/hotplug/memory"},
	{"pmem", "/pmem/"},
}

// BootFromConfig applies a Firecracker --config-file (the same resources
// and checks as the API calls) and starts the VM, as Firecracker does
// with --config-file: the API, if served, is then post-boot.
func (v *VMM) BootFromConfig(ctx context.Context, raw []byte) error {
	var sections map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&sections); err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	known := map[string]bool{}
	for _, s := range configFileSections {
		known[s.key] = true
	}
	for k := range sections {
		if !known[k] {
			return fmt.Errorf("config file: unknown section %q", k)
		}
	}
	put := func(path string, body []byte) error {
		if _, err := v.Do(ctx, http.MethodPut, path, body); err != nil {
			return fmt.Errorf("config file: PUT %s: %w", path, err)
		}
		return nil
	}
	for _, s := range configFileSections {
		body, ok := sections[s.key]
		if !ok || bytes.Equal(bytes.TrimSpace(body), []byte("null")) {
			continue
		}
		if s.path[len(s.path)-1] != '/' {
			if err := put(s.path, body); err != nil {
				return err
			}
			continue
		}
		var items []json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil {
			return fmt.Errorf("config file: %s: want a list: %w", s.key, err)
		}
		idKey := map[string]string{"drives": "drive_id", "network-interfaces": "iface_id", "pmem": "id"}[s.key]
		for _, item := range items {
			var id map[string]any
			json.Unmarshal(item, &id)
			name, _ := id[idKey].(string)
			if err := put(s.path+name, item); err != nil {
				return err
			}
		}
	}
	_, err := v.Do(ctx, http.MethodPut, "/actions", []byte(`{"action_type":"InstanceStart"}`))
	if err != nil {
		return fmt.Errorf("config file: start: %w", err)
	}
	return nil
}
