package safety

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// NextScheduleTime returns the first time after `after` at which the cron
// spec fires, parsed and evaluated as Velero's schedule controller does
// (pkg/controller/schedule_controller.go, v1.14 to v1.18.1:
// parseCronSchedule calls robfig/cron v3 cron.ParseStandard on
// Schedule.spec.schedule, recovering from its panics; getNextRunTime calls
// Next on the reference time): five fields, descriptors such as @daily and
// @every 1h, and an optional CRON_TZ= or TZ= prefix.
//
// robfig/cron evaluates a spec without a zone prefix in the parsing
// process's time.Local. That is Velero's server, whose image and install
// set no TZ, so such a spec fires in UTC: it is evaluated in UTC here too,
// whatever this daemon's own zone. The result is in the spec's location
// (UTC without a prefix). It returns the zero time when the spec never
// fires (e.g. "0 0 30 2 *").
func NextScheduleTime(spec string, after time.Time) (time.Time, error) {
	s, err := parseVeleroSchedule(spec)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse schedule %q: %w", spec, err)
	}

	return s.Next(after), nil
}

// parseVeleroSchedule parses spec as Velero does, in UTC unless it names
// its zone.
func parseVeleroSchedule(spec string) (s cron.Schedule, err error) {
	// Velero rejects an empty spec before parsing it (cron panics on it).
	if spec == "" {
		return nil, errors.New("empty schedule")
	}

	// cron panics on some specs (e.g. "TZ=UTC" with nothing after it);
	// Velero recovers and marks the Schedule FailedValidation. Here a panic
	// is an error, and the schedules check refuses on it.
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("invalid schedule: %v", r)
		}
	}()

	if !strings.HasPrefix(spec, "CRON_TZ=") && !strings.HasPrefix(spec, "TZ=") {
		// The zone Velero's process evaluates it in. cron strips the
		// prefix and trims the rest, so the spec is parsed as Velero
		// parses it (a spec with leading blanks before its own TZ= is
		// invalid in both).
		spec = "CRON_TZ=UTC " + spec
	}

	return cron.ParseStandard(spec)
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

		// Velero's controller ignores a paused Schedule (its event
		// predicate drops it, v1.18.1 SetupWithManager); unpausing it is a
		// spec change the watcher's next pass sees.
		if paused, _, _ := unstructured.NestedBool(o.Object, "spec", "paused"); paused {
			continue
		}

		spec, _, _ := unstructured.NestedString(o.Object, "spec", "schedule")

		lastRun, bad := scheduleReference(o)
		if bad != "" {
			found = append(found, bad)

			continue
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

// scheduleReference returns the time Velero's getNextRunTime computes the
// next run from: status.lastBackup, or the creation time before the first
// backup, or status.lastSkipped when it is later (Velero v1.15 to v1.18
// Schedule status; set when spec.skipImmediately skipped a run). bad
// describes a timestamp that does not parse (the check then refuses).
//
// spec.skipImmediately itself is not read: when set, Velero records
// lastSkipped at its next reconcile and skips the run that was due; not
// anticipating that only makes the check refuse more, never less. Other
// fields of Velero 1.18's ScheduleSpec (template, useOwnerReferencesInBackup)
// do not change when a Schedule fires.
func scheduleReference(o *unstructured.Unstructured) (time.Time, string) {
	ref := o.GetCreationTimestamp().Time

	for _, field := range []string{"lastBackup", "lastSkipped"} {
		s, ok, _ := unstructured.NestedString(o.Object, "status", field)
		if !ok || s == "" {
			continue
		}

		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return time.Time{}, fmt.Sprintf("Schedule %s/%s status.%s %q does not parse (fail closed)",
				o.GetNamespace(), o.GetName(), field, s)
		}

		if field == "lastBackup" || t.After(ref) {
			ref = t
		}
	}

	return ref, ""
}

// relative says "in 10m0s" or "due 5m0s ago".
func relative(now, t time.Time) string {
	d := t.Sub(now).Truncate(time.Second)
	if d >= 0 {
		return "in " + d.String()
	}

	return "due " + (-d).String() + " ago, no backup since"
}
