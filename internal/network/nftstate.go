package network

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"banger/internal/model"
)

// nftState is what `nft -j list table` shows of banger's two tables:
// enough to name every object for removal and to tell whether a VM's
// filter is whole.
type nftState struct {
	// tables are the families whose banger table exists.
	tables map[string]bool
	// chains maps "family/name" to the chain's rule count.
	chains map[string]int
	// sets holds "family/name" of every set and map.
	sets map[string]bool
	// counters maps "family/name" to the counter's packets.
	counters map[string]int64
	// elems are the elements of the verdict maps.
	elems []mapElem
}

// mapElem is one element of a verdict map: a key that jumps to a chain.
type mapElem struct {
	Family, Map, Key, Target string
}

func newNftState() nftState {
	return nftState{tables: map[string]bool{}, chains: map[string]int{}, sets: map[string]bool{}, counters: map[string]int64{}}
}

// nftObject is the part of one entry of nft's JSON output banger reads.
type nftObject struct {
	Table *struct {
		Family string `json:"family"`
		Name   string `json:"name"`
	} `json:"table"`
	Chain *struct {
		Family string `json:"family"`
		Table  string `json:"table"`
		Name   string `json:"name"`
	} `json:"chain"`
	Rule *struct {
		Family string `json:"family"`
		Table  string `json:"table"`
		Chain  string `json:"chain"`
	} `json:"rule"`
	Set     *nftSetJSON `json:"set"`
	Map     *nftSetJSON `json:"map"`
	Counter *struct {
		Family  string `json:"family"`
		Table   string `json:"table"`
		Name    string `json:"name"`
		Packets int64  `json:"packets"`
	} `json:"counter"`
}

type nftSetJSON struct {
	Family string            `json:"family"`
	Table  string            `json:"table"`
	Name   string            `json:"name"`
	Elem   []json.RawMessage `json:"elem"`
}

// parseNftState adds the objects of banger's tables found in one `nft -j
// list ...` output to st. Objects of other tables are ignored.
func parseNftState(st *nftState, out []byte) error {
	var doc struct {
		Nftables []nftObject `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return fmt.Errorf("parse nft -j output: %w", err)
	}
	for _, o := range doc.Nftables {
		switch {
		case o.Table != nil && o.Table.Name == filterTable:
			st.tables[o.Table.Family] = true
		case o.Chain != nil && o.Chain.Table == filterTable:
			key := o.Chain.Family + "/" + o.Chain.Name
			st.chains[key] += 0
		case o.Rule != nil && o.Rule.Table == filterTable:
			st.chains[o.Rule.Family+"/"+o.Rule.Chain]++
		case o.Set != nil && o.Set.Table == filterTable:
			st.sets[o.Set.Family+"/"+o.Set.Name] = true
		case o.Map != nil && o.Map.Table == filterTable:
			st.sets[o.Map.Family+"/"+o.Map.Name] = true
			for _, raw := range o.Map.Elem {
				if e, ok := parseVerdictElem(raw); ok {
					e.Family, e.Map = o.Map.Family, o.Map.Name
					st.elems = append(st.elems, e)
				}
			}
		case o.Counter != nil && o.Counter.Table == filterTable:
			st.counters[o.Counter.Family+"/"+o.Counter.Name] = o.Counter.Packets
		}
	}
	sortElems(st.elems)
	return nil
}

// parseVerdictElem reads a verdict map element, ["key", {"jump":
// {"target": "chain"}}]. Elements of any other shape are skipped.
func parseVerdictElem(raw json.RawMessage) (mapElem, bool) {
	var pair []json.RawMessage
	if json.Unmarshal(raw, &pair) != nil || len(pair) != 2 {
		return mapElem{}, false
	}
	var key string
	if json.Unmarshal(pair[0], &key) != nil {
		return mapElem{}, false
	}
	var v struct {
		Jump *struct {
			Target string `json:"target"`
		} `json:"jump"`
	}
	if json.Unmarshal(pair[1], &v) != nil || v.Jump == nil {
		return mapElem{}, false
	}
	return mapElem{Key: key, Target: v.Jump.Target}, true
}

// baseWhole reports whether the base objects (baseScript) are all there
// with as many rules as baseScript gives them.
func baseWhole(st nftState) bool {
	return st.tables["bridge"] && st.tables["inet"] && st.sets["bridge/ports"] && st.sets["inet/guests"] &&
		st.chains["bridge/prerouting"] == 2 && st.chains["inet/input"] == 1 &&
		st.chains["inet/forward"] == 3 && st.chains["inet/guest-in"] == 4
}

// FilterInfo is what the host shows of one VM's filter.
type FilterInfo struct {
	// VMID is the short ID the objects carry.
	VMID string
	// Tap and GuestIP are the keys that lead to the VM's chains ("" when
	// no element does).
	Tap     string
	GuestIP string
	// Partial is set when some of the VM's objects are missing or a chain
	// is empty (EnableFilter rebuilds it).
	Partial bool
	// Denied is the VM's denied-connection count.
	Denied int64
}

// filterInfos folds the listed objects into one FilterInfo per VM,
// sorted by short ID.
func filterInfos(st nftState) []FilterInfo {
	byVM := map[string]*FilterInfo{}
	get := func(short string) *FilterInfo {
		if byVM[short] == nil {
			byVM[short] = &FilterInfo{VMID: short}
		}
		return byVM[short]
	}
	for key := range st.chains {
		_, name, _ := cutKey(key)
		if short, ok := vmObjectShort(name); ok {
			get(short)
		}
	}
	for key := range st.sets {
		_, name, _ := cutKey(key)
		if short, ok := vmObjectShort(name); ok {
			get(short)
		}
	}
	for key, n := range st.counters {
		_, name, _ := cutKey(key)
		if short, ok := vmObjectShort(name); ok {
			get(short).Denied = n
		}
	}
	for _, e := range st.elems {
		short, ok := vmObjectShort(e.Target)
		if !ok {
			continue
		}
		fi := get(short)
		switch {
		case e.Family == "bridge" && e.Map == "ports":
			fi.Tap = e.Key
		case e.Family == "inet" && e.Map == "guests":
			fi.GuestIP = e.Key
		}
	}
	var out []FilterInfo
	for short, fi := range byVM {
		ch := vmChain(short)
		whole := fi.Tap != "" && fi.GuestIP != "" &&
			st.chains["bridge/"+ch] > 0 && st.chains["inet/"+ch] > 0 &&
			st.sets["inet/"+ch+allowSetSuffix] && st.sets["inet/"+ch+dnsSetSuffix] && st.sets["inet/"+ch+seenSetSuffix]
		if _, ok := st.counters["inet/"+ch+deniedSuffix]; !ok {
			whole = false
		}
		fi.Partial = !whole
		out = append(out, *fi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VMID < out[j].VMID })
	return out
}

func cutKey(key string) (family, name string, ok bool) {
	return strings.Cut(key, "/")
}

// The methods below keep a Manager's copy of the tables in step with the
// scripts it applied (filterChange): each does to the state what the
// matching script did to the host.

// addBase records baseScript: both tables, their maps, and the base
// chains with their rules.
func (st *nftState) addBase() {
	st.tables["bridge"], st.tables["inet"] = true, true
	st.sets["bridge/ports"], st.sets["inet/guests"] = true, true
	st.chains["bridge/prerouting"] = 2
	st.chains["inet/input"] = 1
	st.chains["inet/forward"] = 3
	st.chains["inet/guest-in"] = 4
}

// remove records removeVMObjects: the VM's map elements, chains and sets
// go, and its counter too when counter is set.
func (st *nftState) remove(short string, counter bool) {
	ch := vmChain(short)
	st.elems = slices.DeleteFunc(st.elems, func(e mapElem) bool { return e.Target == ch })
	for _, fam := range []string{"bridge", "inet"} {
		delete(st.chains, fam+"/"+ch)
	}
	for _, suf := range []string{allowSetSuffix, dnsSetSuffix, seenSetSuffix} {
		delete(st.sets, "inet/"+ch+suf)
	}
	if counter {
		delete(st.counters, "inet/"+ch+deniedSuffix)
	}
}

// enable records enableScript for a validated filter.
func (st *nftState) enable(f Filter, logGroup int) {
	short := model.ShortID(f.VMID)
	ch := vmChain(short)
	st.remove(short, false)
	st.elems = slices.DeleteFunc(st.elems, func(e mapElem) bool {
		return (e.Family == "bridge" && e.Map == "ports" && e.Key == f.Tap) || (e.Family == "inet" && e.Map == "guests" && e.Key == f.GuestIP)
	})
	st.chains["bridge/"+ch] = len(bridgeRules(f))
	st.chains["inet/"+ch] = len(egressRules(f, short, logGroup))
	for _, suf := range []string{allowSetSuffix, dnsSetSuffix, seenSetSuffix} {
		st.sets["inet/"+ch+suf] = true
	}
	if _, ok := st.counters["inet/"+ch+deniedSuffix]; !ok {
		st.counters["inet/"+ch+deniedSuffix] = 0
	}
	st.elems = append(st.elems,
		mapElem{Family: "bridge", Map: "ports", Key: f.Tap, Target: ch},
		mapElem{Family: "inet", Map: "guests", Key: f.GuestIP, Target: ch})
	sortElems(st.elems)
}

// sortElems orders map elements by map, then key, as a listing does.
func sortElems(elems []mapElem) {
	sort.Slice(elems, func(i, j int) bool {
		a, b := elems[i], elems[j]
		if a.Family+a.Map != b.Family+b.Map {
			return a.Family+a.Map < b.Family+b.Map
		}
		return a.Key < b.Key
	})
}
