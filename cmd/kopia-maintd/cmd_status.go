package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kopia-maintd/kopia-maintd/maintain"
	"github.com/kopia-maintd/kopia-maintd/repository"
	"github.com/kopia-maintd/kopia-maintd/safety"
	"github.com/kopia-maintd/kopia-maintd/scheduler"
	"github.com/kopia-maintd/kopia-maintd/velero"
)

// repoStatus is one repository in `status` output.
type repoStatus struct {
	Name string `json:"name"`
	*repository.Status
	// CronNextQuick and CronNextFull are the next slots of the configured
	// schedules, for comparison with what the repository records.
	CronNextQuick time.Time `json:"cronNextQuick"`
	CronNextFull  time.Time `json:"cronNextFull"`
	// UnsafeRuns are the newest safety=none requests from the audit log.
	UnsafeRuns []safety.AuditEntry `json:"unsafeRuns,omitempty"`
	// Source names the Velero objects a discovered repository comes from.
	Source *velero.Source `json:"source,omitempty"`
	// Lease is who holds the repository's lease now.
	Lease maintain.LeaseStatus `json:"lease"`
	Error string               `json:"error,omitempty"`
}

// inspectLease reads who holds the named repository's lease.
func inspectLease(ctx context.Context, l *leases, lerr error, name string, now time.Time) maintain.LeaseStatus {
	if lerr != nil {
		return maintain.LeaseStatus{State: maintain.LeaseUnknown, Error: lerr.Error()}
	}

	return maintain.InspectLease(ctx, l.lm, name, now)
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	cfgPath := configFlag(fs)
	only := fs.String("repository", "", "show only this repository")
	asJSON := fs.Bool("json", false, "print JSON")

	if err := parseFlags(fs, args); err != nil {
		return err
	}

	cfg, _, mgr, src, err := setup(*cfgPath, stderr, zapcore.ErrorLevel)
	if err != nil {
		return err
	}

	repos, err := repositoriesFor(cfg, *only)
	if err != nil {
		return err
	}

	ctx := context.Background()
	now := time.Now()
	failed := 0
	audit := safety.NewAuditLog(filepath.Join(cfg.StateDirectory, "audit")).WithStore(mgr)
	lm, lerr := newLeases(cfg, mgr, nil, zap.NewNop())

	var out []repoStatus

	for _, r := range repos {
		rs := repoStatus{Name: r.Name}
		if d := src[r.Name]; d != nil {
			rs.Source = &d.repo.Source
		}
		rs.CronNextQuick, rs.CronNextFull, _ = scheduler.NextTimes(schedulerRepo(r), now)

		st, err := mgr.Status(ctx, r.Name)
		if err != nil {
			rs.Error = err.Error()
			failed++
		}

		if rs.UnsafeRuns, err = audit.Recent(r.Name, 5); err != nil && rs.Error == "" {
			rs.Error = err.Error()
			failed++
		}

		rs.Lease = inspectLease(ctx, lm, lerr, r.Name, now)
		rs.Status = st
		out = append(out, rs)
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")

		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		for i, rs := range out {
			if i > 0 {
				fmt.Fprintln(stdout)
			}

			printStatus(stdout, rs, now)
		}
	}

	if failed > 0 {
		return fmt.Errorf("status of %d of %d repositories could not be read", failed, len(out))
	}

	return nil
}

func fmtTime(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "never"
	}

	d := t.Sub(now).Round(time.Second)

	rel := "in " + d.String()
	if d <= 0 {
		rel = (-d).String() + " ago"
	}

	return t.UTC().Format("2006-01-02 15:04:05 UTC") + " (" + rel + ")"
}

func printStatus(w io.Writer, rs repoStatus, now time.Time) {
	fmt.Fprintf(w, "repository %s\n", rs.Name)

	if src := rs.Source; src != nil {
		fmt.Fprintf(w, "  discovered from: BackupRepository %s/%s, BackupStorageLocation %s (volume namespace %s)\n",
			src.Namespace, src.BackupRepository, src.BackupStorageLocation, src.VolumeNamespace)
	}

	if rs.Status == nil {
		fmt.Fprintf(w, "  error: %s\n", rs.Error)
		return
	}

	st := rs.Status
	owner := st.Owner

	if owner == "" {
		owner = "(nobody)"
	}

	if st.IsSelf {
		owner += " (this daemon)"
	} else {
		owner += " (not this daemon: " + st.Self + ")"
	}

	fmt.Fprintf(w, "  location:        %s\n", st.Location)
	fmt.Fprintf(w, "  owner:           %s\n", owner)

	switch l := rs.Lease; l.State {
	case maintain.LeaseHeld:
		fmt.Fprintf(w, "  lease:           held by %s (renewed %s ago)\n", l.Holder, now.Sub(l.Renewed).Round(time.Second))
	case maintain.LeaseStale:
		fmt.Fprintf(w, "  lease:           stale: %s stopped renewing %s ago; the next run takes it over\n", l.Holder, now.Sub(l.Renewed).Round(time.Second))
	case maintain.LeaseUnknown:
		fmt.Fprintf(w, "  lease:           unknown: %s\n", l.Error)
	default:
		fmt.Fprintf(w, "  lease:           %s\n", l.State)
	}

	if st.PreviousOwnerKnown {
		prev := st.PreviousOwner
		if prev == "" {
			prev = "(nobody)"
		}

		fmt.Fprintf(w, "  previous owner:  %s (taken over %s; hand-back restores it)\n", prev, fmtTime(st.TookOverAt, now))
	} else {
		fmt.Fprintf(w, "  previous owner:  none remembered\n")
	}

	if r := st.Running; r != nil {
		task := r.Progress.Task
		if task == "" {
			task = "starting"
		}

		fmt.Fprintf(w, "  running:         %s cycle since %s, task %s: %d blobs (%s) deleted, %d contents scanned\n",
			r.Cycle, fmtTime(r.Started, now), task, r.Progress.BlobsDeleted, repository.HumanBytes(r.Progress.BytesDeleted), r.Progress.ContentsScanned)
	} else {
		fmt.Fprintf(w, "  running:         no\n")
	}

	fmt.Fprintf(w, "  next quick:      %s\n", fmtTime(st.NextQuick, now))
	fmt.Fprintf(w, "  next full:       %s\n", fmtTime(st.NextFull, now))
	fmt.Fprintf(w, "  last quick ok:   %s\n", fmtTime(st.LastQuick, now))
	fmt.Fprintf(w, "  last full ok:    %s\n", fmtTime(st.LastFull, now))

	fmt.Fprintf(w, "  reclaim:         %s\n", st.Reclaim.Explain())
	fmt.Fprintf(w, "  compaction:      %s\n", st.Compaction.Explain())

	if h := st.Health; h != nil {
		fmt.Fprintf(w, "  health:          %d index blobs, %d session markers, data packs %s, metadata packs %s, indexes %s, other %s\n",
			h.IndexBlobs, h.SessionMarkers, repository.HumanBytes(h.SizeBytes[repository.ClassDataPacks]),
			repository.HumanBytes(h.SizeBytes[repository.ClassMetadataPacks]), repository.HumanBytes(h.SizeBytes[repository.ClassIndex]),
			repository.HumanBytes(h.SizeBytes[repository.ClassOther]))
	}

	for _, e := range rs.UnsafeRuns {
		detail := e.CancelReason
		if detail == "" && e.Result == safety.ResultRefused {
			detail = maintain.Summary(e.Decision)
		}

		if detail == "" {
			detail = e.Error
		}

		fmt.Fprintf(w, "  safety=none:     %s %s, requested by %s", e.Requested.UTC().Format("2006-01-02 15:04:05 UTC"), e.Result, e.RequestedBy)

		if detail != "" {
			fmt.Fprintf(w, ": %s", detail)
		}

		fmt.Fprintln(w)
	}

	if len(st.Tasks) == 0 {
		fmt.Fprintf(w, "  tasks:           no maintenance recorded yet\n")
		return
	}

	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TASK\tLAST RUN\tRESULT\tDURATION\tDETAILS")

	for _, t := range st.Tasks {
		res, detail := "ok", t.Summary
		if !t.Success {
			res, detail = "FAILED", t.Error
		}

		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", t.Task, t.End.UTC().Format("2006-01-02 15:04:05"), res, t.Duration().Round(time.Millisecond), detail)
	}

	_ = tw.Flush()
}
