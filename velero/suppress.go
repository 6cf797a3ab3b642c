package velero

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

// AnnotationOriginalFrequency records on a suppressed BackupRepository its
// spec.maintenanceFrequency from before Suppress ("" when it was unset).
const AnnotationOriginalFrequency = "kopia-maintd.io/original-maintenance-frequency"

// SuppressedFrequency is the spec.maintenanceFrequency Suppress writes: ten
// years. Velero starts a maintenance Job when lastMaintenanceTime +
// maintenanceFrequency is past (backup_repository_controller.go,
// dueForMaintenance), so this is never, for any daemon that runs at all.
// It is a round, recognisable value (with the annotation beside it),
// parses as a metav1.Duration, and stays far below time.Duration's limit
// of about 292 years, so Velero's time arithmetic cannot overflow.
const SuppressedFrequency = "87600h"

// phaseNew is the BackupRepository phase in which (with "") Velero's
// controller runs initializeRepo (backup_repository_controller.go,
// Reconcile).
const phaseNew = "New"

// Suppress stops Velero's own maintenance of the repository of s: it sets
// the BackupRepository's spec.maintenanceFrequency to SuppressedFrequency
// and records the value it replaces in AnnotationOriginalFrequency.
// changed is false when the frequency is SuppressedFrequency already.
//
// Velero keeps a frequency it finds: its controller defaults the field only
// when it is not positive, in initializeRepo
// (pkg/controller/backup_repository_controller.go: "if
// rr.Spec.MaintenanceFrequency.Duration <= 0"), and writes it nowhere else.
// A suppression that races with that defaulting of a new repository can be
// overwritten by Velero's merge patch; the caller calls Suppress before
// every cycle, and it sets the field again. An annotation already there is
// kept: it holds the value from before the first suppression, which a
// later Suppress (after Velero or a person changed the frequency) must not
// replace.
//
// The patch carries the resourceVersion read, so a concurrent write makes
// it fail with a conflict and the object is read again: the annotation
// always records the value actually replaced.
func (d *Discovery) Suppress(ctx context.Context, s Source) (changed bool, err error) {
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		changed = false

		br, err := d.getBackupRepository(ctx, s)
		if err != nil {
			return err
		}

		freq, _, err := unstructured.NestedString(br.Object, "spec", "maintenanceFrequency")
		if err != nil {
			return fmt.Errorf("BackupRepository %s/%s spec.maintenanceFrequency: %w", s.Namespace, s.BackupRepository, err)
		}

		if freq == SuppressedFrequency {
			return nil
		}

		original, recorded := br.GetAnnotations()[AnnotationOriginalFrequency]
		if !recorded {
			original = freq
		}

		if err := d.patchBackupRepository(ctx, s, br.GetResourceVersion(), original, SuppressedFrequency); err != nil {
			return err
		}

		changed = true

		d.log.Info("velero maintenance suppressed",
			zap.String("backup_repository", s.BackupRepository),
			zap.String("replaced_frequency", freq), zap.String("original_frequency", original))

		return nil
	})
	if err != nil {
		return false, fmt.Errorf("suppress velero maintenance of BackupRepository %s/%s: %w", s.Namespace, s.BackupRepository, err)
	}

	return changed, nil
}

// Restore undoes Suppress: it removes AnnotationOriginalFrequency and sets
// spec.maintenanceFrequency back to the value recorded there. changed is
// false when there is no annotation (nothing to restore).
//
// The recorded value is written back as it was, with two exceptions:
//
//   - When the frequency is no longer SuppressedFrequency, someone (a
//     person, or Velero's initializeRepo racing with Suppress) set it since:
//     that value is kept and only the annotation goes.
//   - When the recorded value is unset, zero or not a duration and the
//     repository is past phase New, Options.DefaultMaintenanceFrequency is
//     written instead. Velero applies its default only in initializeRepo,
//     for a repository in phase "" or New; a Ready repository with a zero
//     frequency is due on every reconcile (dueForMaintenance:
//     lastMaintenanceTime + 0 is always past), which would start a
//     maintenance Job every few minutes. In phase ""/New the value is put
//     back as it was (an unset one by removing the field) and Velero
//     defaults it itself. (Velero writes the field on every object it
//     makes, and its CRD requires it, so an unset value comes only from
//     objects Velero did not write, under a CRD that allows it.)
func (d *Discovery) Restore(ctx context.Context, s Source) (changed bool, err error) {
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		changed = false

		br, err := d.getBackupRepository(ctx, s)
		if err != nil {
			return err
		}

		original, recorded := br.GetAnnotations()[AnnotationOriginalFrequency]
		if !recorded {
			return nil
		}

		freq, hasFreq, err := unstructured.NestedString(br.Object, "spec", "maintenanceFrequency")
		if err != nil {
			return fmt.Errorf("BackupRepository %s/%s spec.maintenanceFrequency: %w", s.Namespace, s.BackupRepository, err)
		}

		phase, _, _ := unstructured.NestedString(br.Object, "status", "phase")
		target := restoreTarget(original, freq, hasFreq, phase, d.opts.DefaultMaintenanceFrequency)

		if target.warn != "" {
			d.log.Warn(target.warn, zap.String("backup_repository", s.BackupRepository),
				zap.String("original_frequency", original), zap.String("phase", phase))
		}

		if err := d.patchBackupRepository(ctx, s, br.GetResourceVersion(), nil, target.frequency); err != nil {
			return err
		}

		changed = true

		d.log.Info("velero maintenance restored", zap.String("backup_repository", s.BackupRepository),
			zap.Any("maintenance_frequency", target.frequency))

		return nil
	})
	if err != nil {
		return false, fmt.Errorf("restore velero maintenance of BackupRepository %s/%s: %w", s.Namespace, s.BackupRepository, err)
	}

	return changed, nil
}

// restoration is what Restore writes: frequency is a string, or nil to
// remove the field; warn, when set, says why the recorded value is not
// written back.
type restoration struct {
	frequency any
	warn      string
}

// restoreTarget decides Restore's frequency (see Restore).
func restoreTarget(original, current string, hasCurrent bool, phase string, def time.Duration) restoration {
	if hasCurrent && current != SuppressedFrequency {
		return restoration{frequency: current}
	}

	d, err := time.ParseDuration(original)

	switch {
	case err == nil && d > 0:
		return restoration{frequency: original}
	case phase == "" || phase == phaseNew:
		if original == "" {
			return restoration{frequency: nil}
		}

		if err == nil {
			return restoration{frequency: original}
		}
	}

	return restoration{
		frequency: def.String(),
		warn:      "original velero maintenance frequency unset, zero or invalid and the repository initialised: restoring the default instead",
	}
}

// Suppressed reports whether the repository's spec.maintenanceFrequency is
// SuppressedFrequency.
func (d *Discovery) Suppressed(ctx context.Context, s Source) (bool, error) {
	br, err := d.getBackupRepository(ctx, s)
	if err != nil {
		return false, err
	}

	freq, _, _ := unstructured.NestedString(br.Object, "spec", "maintenanceFrequency")

	return freq == SuppressedFrequency, nil
}

func (d *Discovery) getBackupRepository(ctx context.Context, s Source) (*unstructured.Unstructured, error) {
	cctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()

	br, err := d.opts.Dynamic.Resource(backupRepositoriesGVR).Namespace(s.Namespace).Get(cctx, s.BackupRepository, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get BackupRepository %s/%s: %w", s.Namespace, s.BackupRepository, err)
	}

	return br, nil
}

// patchBackupRepository merge-patches the annotation (a string, or nil to
// remove it) and spec.maintenanceFrequency (a string, or nil to remove it)
// of the BackupRepository at resourceVersion: the API server refuses the
// patch with a conflict when the object changed since it was read.
func (d *Discovery) patchBackupRepository(ctx context.Context, s Source, resourceVersion string, annotation, frequency any) error {
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{
			"resourceVersion": resourceVersion,
			"annotations":     map[string]any{AnnotationOriginalFrequency: annotation},
		},
		"spec": map[string]any{"maintenanceFrequency": frequency},
	})
	if err != nil {
		return fmt.Errorf("encode patch: %w", err)
	}

	cctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()

	_, err = d.opts.Dynamic.Resource(backupRepositoriesGVR).Namespace(s.Namespace).Patch(cctx, s.BackupRepository, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("patch BackupRepository %s/%s: %w", s.Namespace, s.BackupRepository, err)
	}

	return nil
}
