package safety

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/robfig/cron/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// NextScheduleTime returns the first time after `after` at which the cron
// spec fires, parsed as Velero parses Schedule.spec.schedule (robfig/cron v3
// ParseStandard: five fields, an optional CRON_TZ= or TZ= prefix, and
// descriptors such as @daily and @every 1h). It returns the zero time when
// the spec never fires (e.g. "0 0 30 2 *").
func NextScheduleTime(spec string, after time.Time) (time.Time, error) {
	s, err := cron.ParseStandard(spec)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse schedule %q: %w", spec, err)
	}

	return s.Next(after), nil
}

// scheduleDue decides whether a Velero Schedule may start a backup within
// margin of now, and returns the run time it found.
//
// Velero's schedule controller runs a backup as soon as
// cron.Next(lastBackup, or the creation time before the first backup) is
// not after now; a run missed while Velero was down therefore starts the
// moment Velero is back, and a run that is due starts within the
// controller's next pass, before any Backup object shows it. So the window
// reaches back as well as forward: the first run after max(lastRun, now -
// margin) refuses when it falls before now + margin. Looking back only
// margin (not to the last backup) keeps a schedule that has been missed
// for days, while Velero was scaled to zero on purpose, from blocking the
// gate for good; the velero-server check and the watcher cover Velero
// coming back.
func scheduleDue(spec string, lastRun, now time.Time, margin time.Duration) (next time.Time, due bool, err error) {
	// One nanosecond back so that a run exactly margin ago (or exactly now,
	// with no margin) is found: cron's Next is strictly after its argument.
	from := now.Add(-margin - time.Nanosecond)
	if lastRun.After(from) {
		from = lastRun
	}

	next, err = NextScheduleTime(spec, from)
	if err != nil {
		return time.Time{}, false, err
	}

	if next.IsZero() {
		return next, false, nil
	}

	return next, !next.After(now.Add(margin)), nil
}

// checkSchedules refuses while an unpaused Velero Schedule is due within
// ScheduleMargin, or has a spec that does not parse.
func (k *KubernetesChecks) checkSchedules(ctx context.Context, ns string, avail availability, now time.Time) Check {
	if c, ok := avail.absentOrErr(CheckSchedules, ns, schedulesGVR); ok {
		return c
	}

	items, notInstalled, err := k.listAll(ctx, ns, schedulesGVR)
	if err != nil {
		return refuseErr(CheckSchedules, ns, "list schedules", err)
	}

	if notInstalled {
		return Check{Name: CheckSchedules, Namespace: ns, Verdict: Absent, Reason: reasonCRDNotInstalled}
	}

	var found []string

	for i := range items {
		o := &items[i]

		if paused, _, _ := unstructured.NestedBool(o.Object, "spec", "paused"); paused {
			continue
		}

		spec, _, _ := unstructured.NestedString(o.Object, "spec", "schedule")
		lastRun := o.GetCreationTimestamp().Time

		if s, ok, _ := unstructured.NestedString(o.Object, "status", "lastBackup"); ok && s != "" {
			t, err := time.Parse(time.RFC3339, s)
			if err != nil {
				found = append(found, fmt.Sprintf("Schedule %s/%s status.lastBackup %q does not parse (fail closed)",
					o.GetNamespace(), o.GetName(), s))

				continue
			}

			lastRun = t
		}

		next, due, err := scheduleDue(spec, lastRun, now, k.ScheduleMargin)

		switch {
		case err != nil:
			found = append(found, fmt.Sprintf("Schedule %s/%s spec %q does not parse (fail closed): %v",
				o.GetNamespace(), o.GetName(), spec, err))
		case due:
			found = append(found, fmt.Sprintf("Schedule %s/%s spec %q next %s (%s)",
				o.GetNamespace(), o.GetName(), spec, next.UTC().Format(time.RFC3339), relative(now, next)))
		}
	}

	sort.Strings(found)

	return verdictFrom(CheckSchedules, ns, found,
		"velero schedules due within "+k.ScheduleMargin.String(),
		"no unpaused velero schedule due within "+k.ScheduleMargin.String())
}

// relative says "in 10m0s" or "due 5m0s ago".
func relative(now, t time.Time) string {
	d := t.Sub(now).Truncate(time.Second)
	if d >= 0 {
		return "in " + d.String()
	}

	return "due " + (-d).String() + " ago, no backup since"
}
