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
	// elems are the elements of the base sets and maps (baseSets).
	elems []setElem
}

// setElem is one element of a base set or map.
type setElem struct {
	Family, Set string
	// Key is the element's key, its fields joined by " . " (interface
	// names unquoted): "bgtap0", "bgtap0 . 02:00:00:00:00:01 . 10.0.0.2",
	// "10.0.0.2".
	Key string
	// Verdict is a map element's data, "accept" or "jump CHAIN"; "" in a
	// set.
	Verdict string
	// Owner is the short ID of the VM whose element it is, from its
	// comment "vm-<short>"; "" when it has none.
	Owner string
}

// owner is the short ID of the VM an element belongs to: its comment's,
// else (elements an older banger made) the VM whose chain it jumps to.
func (e setElem) owner() string {
	if e.Owner != "" {
		return e.Owner
	}
	if target, ok := strings.CutPrefix(e.Verdict, "jump "); ok {
		if short, ok := vmObjectShort(target); ok {
			return short
		}
	}
	return ""
}

// baseSets are the sets and maps whose elements the state keeps, by
// "family/name": the VMs' elements (and the map of an older banger).
var baseSets = map[string]bool{
	"bridge/" + tapsSet: true, "bridge/" + identSet: true, "inet/" + guestsMap: true, "bridge/ports": true,
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
			st.addElems(o.Set)
		case o.Map != nil && o.Map.Table == filterTable:
			st.sets[o.Map.Family+"/"+o.Map.Name] = true
			st.addElems(o.Map)
		case o.Counter != nil && o.Counter.Table == filterTable:
			st.counters[o.Counter.Family+"/"+o.Counter.Name] = o.Counter.Packets
		}
	}
	sortElems(st.elems)
	return nil
}

// addElems records the elements of a listed base set or map. Elements
// of any other shape are skipped.
func (st *nftState) addElems(s *nftSetJSON) {
	if !baseSets[s.Family+"/"+s.Name] {
		return
	}
	for _, raw := range s.Elem {
		if e, ok := parseElem(raw); ok {
			e.Family, e.Set = s.Family, s.Name
			st.elems = append(st.elems, e)
		}
	}
}

// parseElem reads one listed element: a key, or {"elem": {"val": key,
// "comment": c}}, or for a verdict map a pair [that, verdict] where the
// verdict is {"accept": null} or {"jump": {"target": "chain"}}. A key is
// a string or {"concat": [strings]}.
func parseElem(raw json.RawMessage) (setElem, bool) {
	var e setElem
	var pair []json.RawMessage
	if json.Unmarshal(raw, &pair) == nil {
		if len(pair) != 2 {
			return e, false
		}
		v, ok := parseVerdict(pair[1])
		if !ok {
			return e, false
		}
		e.Verdict, raw = v, pair[0]
	}
	var wrapped struct {
		Elem *struct {
			Val     json.RawMessage `json:"val"`
			Comment string          `json:"comment"`
		} `json:"elem"`
	}
	if json.Unmarshal(raw, &wrapped) == nil && wrapped.Elem != nil {
		raw = wrapped.Elem.Val
		if c, ok := strings.CutPrefix(wrapped.Elem.Comment, vmObjPrefix); ok {
			e.Owner = c
		}
	}
	var key string
	if json.Unmarshal(raw, &key) == nil {
		e.Key = key
		return e, true
	}
	var concat struct {
		Concat []string `json:"concat"`
	}
	if json.Unmarshal(raw, &concat) == nil && len(concat.Concat) > 0 {
		e.Key = strings.Join(concat.Concat, " . ")
		return e, true
	}
	return e, false
}

// parseVerdict reads a verdict map element's data: "accept" or "jump
// CHAIN"; any other verdict is skipped.
func parseVerdict(raw json.RawMessage) (string, bool) {
	var v map[string]json.RawMessage
	if json.Unmarshal(raw, &v) != nil || len(v) != 1 {
		return "", false
	}
	if _, ok := v["accept"]; ok {
		return "accept", true
	}
	var jump struct {
		Target string `json:"target"`
	}
	if j, ok := v["jump"]; ok && json.Unmarshal(j, &jump) == nil && jump.Target != "" {
		return "jump " + jump.Target, true
	}
	return "", false
}

// baseWhole reports whether the base objects (baseScript) are all there
// with as many rules as baseScript gives them.
func baseWhole(st nftState) bool {
	return st.tables["bridge"] && st.tables["inet"] &&
		st.sets["bridge/"+tapsSet] && st.sets["bridge/"+identSet] && st.sets["inet/"+guestsMap] &&
		st.chains["bridge/prerouting"] == 2 && st.chains["bridge/"+guestChain] == len(bridgeRules()) &&
		st.chains["inet/input"] == 1 && st.chains["inet/forward"] == 3 && st.chains["inet/guest-in"] == 4
}

// FilterInfo is what the host shows of one VM's filter.
type FilterInfo struct {
	// VMID is the short ID the objects carry.
	VMID string
	// Tap and GuestIP are the keys of the VM's elements of taps and
	// guests ("" when it has none).
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
	ident := map[string]bool{}
	verdict := map[string]string{}
	legacy := map[string]bool{}
	for _, e := range st.elems {
		short := e.owner()
		if short == "" {
			continue
		}
		fi := get(short)
		switch e.Family + "/" + e.Set {
		case "bridge/" + tapsSet:
			fi.Tap = e.Key
		case "bridge/" + identSet:
			ident[short] = true
		case "inet/" + guestsMap:
			fi.GuestIP = e.Key
			verdict[short] = e.Verdict
		default:
			legacy[short] = true
		}
	}
	var out []FilterInfo
	for short, fi := range byVM {
		ch := vmChain(short)
		own := st.chains["inet/"+ch] > 0 && st.sets["inet/"+ch+allowSetSuffix] && st.sets["inet/"+ch+dnsSetSuffix] && st.sets["inet/"+ch+seenSetSuffix]
		if _, ok := st.counters["inet/"+ch+deniedSuffix]; !ok {
			own = false
		}
		_, anyChain := st.chains["inet/"+ch]
		anySet := st.sets["inet/"+ch+allowSetSuffix] || st.sets["inet/"+ch+dnsSetSuffix] || st.sets["inet/"+ch+seenSetSuffix]
		_, oldChain := st.chains["bridge/"+ch]
		whole := fi.Tap != "" && ident[short] && fi.GuestIP != "" && !legacy[short] && !oldChain
		switch verdict[short] {
		case "accept":
			// An open VM has no chain or sets of its own.
			whole = whole && !anyChain && !anySet
		case "jump " + ch:
			whole = whole && own
		default:
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

// addBase records baseScript: both tables, their sets and map, and the
// base chains with their rules.
func (st *nftState) addBase() {
	st.tables["bridge"], st.tables["inet"] = true, true
	st.sets["bridge/"+tapsSet], st.sets["bridge/"+identSet], st.sets["inet/"+guestsMap] = true, true, true
	st.chains["bridge/prerouting"] = 2
	st.chains["bridge/"+guestChain] = len(bridgeRules())
	st.chains["inet/input"] = 1
	st.chains["inet/forward"] = 3
	st.chains["inet/guest-in"] = 4
}

// remove records removeVMObjects: the VM's elements, chains and sets
// go, and its counter too when counter is set.
func (st *nftState) remove(short string, counter bool) {
	ch := vmChain(short)
	st.elems = slices.DeleteFunc(st.elems, func(e setElem) bool { return e.owner() == short })
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

// enable records enableOp for a validated filter.
func (st *nftState) enable(f Filter, logGroup int) {
	short := model.ShortID(f.VMID)
	ch := vmChain(short)
	st.remove(short, false)
	st.elems = slices.DeleteFunc(st.elems, func(e setElem) bool { return elemClashes(e, f) })
	if f.Egress.Effective() != model.EgressOpen {
		st.chains["inet/"+ch] = len(egressRules(f, short, logGroup))
		for _, suf := range []string{allowSetSuffix, dnsSetSuffix, seenSetSuffix} {
			st.sets["inet/"+ch+suf] = true
		}
		if _, ok := st.counters["inet/"+ch+deniedSuffix]; !ok {
			st.counters["inet/"+ch+deniedSuffix] = 0
		}
	}
	st.elems = append(st.elems, vmElems(f)...)
	sortElems(st.elems)
}

// sortElems orders elements by set, then key, as a listing does.
func sortElems(elems []setElem) {
	sort.Slice(elems, func(i, j int) bool {
		a, b := elems[i], elems[j]
		if a.Family+a.Set != b.Family+b.Set {
			return a.Family+a.Set < b.Family+b.Set
		}
		return a.Key < b.Key
	})
}
