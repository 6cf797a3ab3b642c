package safety

import (
	"context"
	"fmt"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Check names of the workload signals.
const (
	CheckVeleroServer    = "velero-server"
	CheckNodeAgent       = "node-agent"
	CheckDataPathPods    = "data-path-pods"
	CheckMaintenanceJobs = "maintenance-jobs"
)

// listPageSize bounds one list response; lists page through the rest.
const listPageSize = 500

// dataPathLabels mark the pods that move volume data (Velero's data mover and
// file-system backup exposers); each is a writer to a repository.
var dataPathLabels = []string{
	"velero.io/data-upload",
	"velero.io/data-download",
	"velero.io/pod-volume-backup",
	"velero.io/pod-volume-restore",
}

// nodeAgentDaemonSets are the DaemonSets Velero installs for file-system
// backup and the data mover.
var nodeAgentDaemonSets = []string{"node-agent", "node-agent-windows"}

// podFinished reports a pod that can no longer write. Pending, Running,
// Unknown and an empty phase all count as live.
func podFinished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

func podEvidence(p *corev1.Pod, now time.Time) string {
	phase := string(p.Status.Phase)
	if phase == "" {
		phase = "(none)"
	}

	return fmt.Sprintf("Pod %s/%s phase %s %s", p.Namespace, p.Name, phase, age(now, p.CreationTimestamp.Time))
}

// listPods lists every pod of the namespace, page by page. One unfiltered
// list serves three signals (label selectors cannot express their ORs).
func (k *KubernetesChecks) listPods(ctx context.Context, ns string) ([]corev1.Pod, error) {
	var (
		out  []corev1.Pod
		cont string
	)

	for {
		cctx, cancel := k.callCtx(ctx)
		list, err := k.Client.CoreV1().Pods(ns).List(cctx, metav1.ListOptions{Limit: listPageSize, Continue: cont})

		cancel()

		if err != nil {
			return nil, err
		}

		out = append(out, list.Items...)

		cont = list.Continue
		if cont == "" {
			return out, nil
		}
	}
}

// checkPods returns the velero-server, node-agent and data-path-pods checks;
// deploy is the velero Deployment (nil when there is none) or depErr the
// failure to get it.
func (k *KubernetesChecks) checkPods(ctx context.Context, ns string, deploy *appsv1.Deployment, depErr error, now time.Time) []Check {
	var server, agent, dataPath []string

	pods, podErr := k.listPods(ctx, ns)

	for i := range pods {
		p := &pods[i]
		if podFinished(p) || slices.Contains(k.IgnorePods, p.Name) {
			continue
		}

		l := p.Labels
		if l["component"] == "velero" || l["deploy"] == "velero" {
			server = append(server, podEvidence(p, now))
		}

		if l["name"] == "node-agent" {
			agent = append(agent, podEvidence(p, now))
		}

		for _, key := range dataPathLabels {
			if _, ok := l[key]; ok {
				dataPath = append(dataPath, podEvidence(p, now)+" label "+key)

				break
			}
		}
	}

	var out []Check

	// velero-server: the Deployment first (a bare scale-up makes no pod yet),
	// then its pods.
	switch {
	case depErr != nil:
		out = append(out, refuseErr(CheckVeleroServer, ns, "get deployment velero", depErr))
	case podErr != nil:
		out = append(out, refuseErr(CheckVeleroServer, ns, "list pods", podErr))
	default:
		out = append(out, verdictFrom(CheckVeleroServer, ns, append(deploymentEvidence(deploy, now), server...),
			"velero server deployment or pods running", "no velero deployment replicas and no velero pod running"))
	}

	sets, dsErr := k.nodeAgentDaemonSets(ctx, ns, now)

	switch {
	case dsErr != nil:
		out = append(out, refuseErr(CheckNodeAgent, ns, "get daemonset", dsErr))
	case podErr != nil:
		out = append(out, refuseErr(CheckNodeAgent, ns, "list pods", podErr))
	default:
		out = append(out, verdictFrom(CheckNodeAgent, ns, append(sets, agent...),
			"node-agent daemonset or pods running", "no node-agent pod scheduled or running"))
	}

	if podErr != nil {
		out = append(out, refuseErr(CheckDataPathPods, ns, "list pods", podErr))
	} else {
		out = append(out, verdictFrom(CheckDataPathPods, ns, dataPath,
			"data-path pods not finished", "no data-path pod running"))
	}

	return out
}

// getVeleroDeployment gets Deployment velero of ns; nil without error when
// there is none.
func (k *KubernetesChecks) getVeleroDeployment(ctx context.Context, ns string) (*appsv1.Deployment, error) {
	cctx, cancel := k.callCtx(ctx)
	defer cancel()

	d, err := k.Client.AppsV1().Deployments(ns).Get(cctx, "velero", metav1.GetOptions{})
	if isNotFound(err) {
		return nil, nil
	}

	if err != nil {
		return nil, err
	}

	return d, nil
}

// deploymentEvidence returns evidence of activity when the velero
// Deployment d wants or has any replica. No Deployment is no evidence of
// activity here; the velero-installation check refuses a namespace with no
// sign of Velero at all.
func deploymentEvidence(d *appsv1.Deployment, now time.Time) []string {
	if d == nil || deploymentIdle(d) {
		return nil
	}

	return []string{describeDeployment(d, now)}
}

func describeDeployment(d *appsv1.Deployment, now time.Time) string {
	desired := int32(1) // nil replicas defaults to 1
	if d.Spec.Replicas != nil {
		desired = *d.Spec.Replicas
	}

	return fmt.Sprintf("Deployment %s/%s replicas desired %d available %d ready %d %s",
		d.Namespace, d.Name, desired, d.Status.AvailableReplicas, d.Status.ReadyReplicas,
		age(now, d.CreationTimestamp.Time))
}

func deploymentIdle(d *appsv1.Deployment) bool {
	desired := d.Spec.Replicas == nil || *d.Spec.Replicas > 0

	return !desired && d.Status.AvailableReplicas == 0 && d.Status.ReadyReplicas == 0 && d.Status.Replicas == 0
}

// nodeAgentDaemonSets returns evidence for each node-agent DaemonSet that
// schedules or wants any pod.
func (k *KubernetesChecks) nodeAgentDaemonSets(ctx context.Context, ns string, now time.Time) ([]string, error) {
	var out []string

	for _, name := range nodeAgentDaemonSets {
		cctx, cancel := k.callCtx(ctx)
		ds, err := k.Client.AppsV1().DaemonSets(ns).Get(cctx, name, metav1.GetOptions{})

		cancel()

		if isNotFound(err) {
			continue
		}

		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}

		if daemonSetIdle(ds) {
			continue
		}

		out = append(out, fmt.Sprintf("DaemonSet %s/%s scheduled %d desired %d ready %d %s",
			ds.Namespace, ds.Name, ds.Status.CurrentNumberScheduled, ds.Status.DesiredNumberScheduled,
			ds.Status.NumberReady, age(now, ds.CreationTimestamp.Time)))
	}

	return out, nil
}

func daemonSetIdle(ds *appsv1.DaemonSet) bool {
	s := ds.Status

	return s.CurrentNumberScheduled == 0 && s.DesiredNumberScheduled == 0 && s.NumberReady == 0 && s.NumberAvailable == 0
}

// checkMaintenanceJobs refuses while any Velero repository maintenance Job
// (labelled velero.io/repo-name) is active or not yet finished.
func (k *KubernetesChecks) checkMaintenanceJobs(ctx context.Context, ns string, now time.Time) Check {
	var (
		found []string
		cont  string
	)

	for {
		cctx, cancel := k.callCtx(ctx)
		list, err := k.Client.BatchV1().Jobs(ns).List(cctx, metav1.ListOptions{
			LabelSelector: "velero.io/repo-name",
			Limit:         listPageSize,
			Continue:      cont,
		})

		cancel()

		if err != nil {
			return refuseErr(CheckMaintenanceJobs, ns, "list jobs", err)
		}

		for i := range list.Items {
			j := &list.Items[i]
			if !jobFinished(j) {
				found = append(found, fmt.Sprintf("Job %s/%s repository %s active %d %s",
					j.Namespace, j.Name, j.Labels["velero.io/repo-name"], j.Status.Active,
					age(now, j.CreationTimestamp.Time)))
			}
		}

		cont = list.Continue
		if cont == "" {
			break
		}
	}

	return verdictFrom(CheckMaintenanceJobs, ns, found,
		"velero maintenance jobs active", "no velero maintenance job active")
}

// jobFinished reports a Job that runs no pod and will start none: no active
// pod, and a Complete or Failed condition (or a success count). A Job the
// controller has not picked up yet has none of these and counts as active.
func jobFinished(j *batchv1.Job) bool {
	if j.Status.Active > 0 {
		return false
	}

	for _, c := range j.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return true
		}
	}

	return j.Status.Succeeded > 0
}
