// Package load holds the load test of kopia-maintd: the daemon binary
// maintaining hundreds of repositories in one real MinIO at concurrency 4
// through an hour of schedules compressed in time, with every run checked
// against the cron slots it was due for and against the run history kopia
// keeps in each repository. The test is the package's only content; see
// docs/reliability.md for how to run it and its figures.
package load
