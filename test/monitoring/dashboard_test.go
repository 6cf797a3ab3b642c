package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// dashboardPanel is the part of a Grafana panel the test reads.
type dashboardPanel struct {
	ID         int               `json:"id"`
	Type       string            `json:"type"`
	Title      string            `json:"title"`
	Datasource *dashboardDS      `json:"datasource"`
	Targets    []dashboardTarget `json:"targets"`
	Panels     []dashboardPanel  `json:"panels"` // rows
}

type dashboardDS struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashboardTarget struct {
	Expr       string       `json:"expr"`
	RefID      string       `json:"refId"`
	Datasource *dashboardDS `json:"datasource"`
}

type dashboard struct {
	UID           string           `json:"uid"`
	Title         string           `json:"title"`
	SchemaVersion int              `json:"schemaVersion"`
	Panels        []dashboardPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *dashboardDS    `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

// TestDashboard checks dashboard.json: valid JSON, the datasource and
// repository variables, every query on the ${datasource} variable, every
// expression built from contract metrics only (filtered by $repository where
// the metric has that label), and a panel for each thing an operator looks
// at.
func TestDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(monitoringDir(t), "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(data) {
		t.Fatal("dashboard.json is not valid JSON")
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: want both set (a fixed uid keeps links stable)", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want >= 36", d.SchemaVersion)
	}
	c := contract(t)

	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch {
		case v.Name == "datasource":
			var q string
			_ = json.Unmarshal(v.Query, &q)
			if v.Type != "datasource" || q != "prometheus" {
				t.Errorf("variable datasource: type %q query %q, want a prometheus datasource variable", v.Type, q)
			}
		case v.Type == "query":
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable %s: datasource %+v, want uid ${datasource}", v.Name, v.Datasource)
			}
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil || q.Query == "" {
				// The older form: the query as a plain string.
				_ = json.Unmarshal(v.Query, &q.Query)
			}
			checkExpr(t, "variable "+v.Name, q.Query, c)
		}
	}
	for _, want := range []string{"datasource", "repository"} {
		if !vars[want] {
			t.Errorf("no %s variable", want)
		}
	}

	used := map[string]bool{}
	ids := map[int]string{}
	var walk func(ps []dashboardPanel)
	walk = func(ps []dashboardPanel) {
		for _, p := range ps {
			if other, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: datasource %+v, want uid ${datasource}", p.Title, p.Datasource)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q: no queries", p.Title)
			}
			for _, tg := range p.Targets {
				where := fmt.Sprintf("panel %q query %s", p.Title, tg.RefID)
				if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
					t.Errorf("%s: datasource %+v, want uid ${datasource}", where, tg.Datasource)
				}
				for _, m := range checkExpr(t, where, tg.Expr, c) {
					used[m] = true
				}
				_, selectors := parsePromQL(tg.Expr)
				for _, s := range selectors {
					if c[s.metric].labels["repository"] && s.matchers["repository"] != `=~"$repository"` {
						t.Errorf("%s: %s is not filtered by repository=~\"$repository\"", where, s.metric)
					}
				}
			}
		}
	}
	walk(d.Panels)

	// The panels the kit promises: run timeline, durations, current task,
	// bytes reclaimed, retained bytes and eligibility, index blobs, ownership,
	// last success age.
	for _, m := range []string{
		"in_progress", "run_duration_seconds_bucket", "current_task", "bytes_deleted_total",
		"retained_bytes", "reclaim_eligible_timestamp_seconds", "index_blobs", "owner_info",
		"last_success_timestamp_seconds",
	} {
		if !used[prefix+m] {
			t.Errorf("no panel shows %s%s", prefix, m)
		}
	}
}
