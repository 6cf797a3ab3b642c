package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"
)

// ErrReleased reports a lease its holder released: Held.Check returns it
// after Release, so a storage write that races with the end of a run fails.
var ErrReleased = errors.New("lease released")

// ErrNotHeld reports a Held that Acquire did not make: a nil pointer or the
// zero value. Such a value proves nothing, so every check on it fails.
var ErrNotHeld = errors.New("lease not held")

// Reasons passed to Recorder.Lost.
const (
	// ReasonExpired: the wall clock passed the deadline without a failed
	// renewal (the process was paused, or its renewals were late).
	ReasonExpired = "expired"
	// ReasonRenewFailed: renewals failed until the deadline passed.
	ReasonRenewFailed = "renew-failed"
	// ReasonTaken: another holder has the lease now.
	ReasonTaken = "taken"
	// ReasonReleasedLate: the run ended, but its deadline had passed before
	// Release (and before the once-a-second check noticed).
	ReasonReleasedLate = "released-late"
)

// checkInterval is how often the watchdog reads the wall clock.
const checkInterval = time.Second

// Recorder receives the lease events metrics count. Calls come from the
// lease's goroutines and from Check's caller; implementations must be safe
// for concurrent use.
type Recorder interface {
	// Held reports whether the named lease is held by this process.
	Held(name string, held bool)
	// Acquired counts a successful Acquire.
	Acquired(name string)
	// Lost counts a lease lost before Release, with one of the Reason
	// constants.
	Lost(name, reason string)
}

// Options configure a Manager.
type Options struct {
	// Backend stores the leases.
	Backend Backend
	// Holder is this process' identity, unique per process start (see
	// NewHolderIdentity).
	Holder string
	// Duration is how long a lease that is not renewed stays valid: other
	// holders take it over only after this long.
	Duration time.Duration
	// RenewInterval is the time between renewals. It must leave room for
	// retries before the deadline (Duration - Margin).
	RenewInterval time.Duration
	// Margin allows for clock drift between this process and whatever
	// judges staleness (the API server's observers, the storage's
	// timestamps): a holder stops at Duration - Margin after its last
	// renewal. Zero means Duration/5.
	Margin time.Duration
	// Clock drives renewals and the deadline; nil means the real clock.
	Clock clock.WithTicker
	// Logger; nil means no logs.
	Logger *zap.Logger
	// Recorder receives lease events; nil means none.
	Recorder Recorder
}

// Manager acquires leases for one holder.
type Manager struct {
	opts Options
	log  *zap.Logger

	// testHookRenewed, when set, runs after each renewal attempt has been
	// applied (or failed).
	testHookRenewed func(name string, err error)

	mu   sync.Mutex
	busy map[string]bool // names this process holds or is acquiring
}

// New validates opts and returns a Manager.
func New(opts Options) (*Manager, error) {
	if opts.Margin == 0 {
		opts.Margin = opts.Duration / 5
	}
	var errs []error
	if opts.Backend == nil {
		errs = append(errs, errors.New("backend: required"))
	}
	if opts.Holder == "" {
		errs = append(errs, errors.New("holder: required"))
	}
	if opts.Duration <= 0 {
		errs = append(errs, fmt.Errorf("duration: %v, must be positive", opts.Duration))
	}
	if opts.Margin < 0 || (opts.Duration > 0 && opts.Margin >= opts.Duration) {
		errs = append(errs, fmt.Errorf("margin: %v, must be at least 0 and less than the duration %v", opts.Margin, opts.Duration))
	}
	if opts.RenewInterval <= 0 {
		errs = append(errs, fmt.Errorf("renewInterval: %v, must be positive", opts.RenewInterval))
	} else if opts.Duration > 0 && opts.Margin < opts.Duration && opts.RenewInterval >= opts.Duration-opts.Margin {
		errs = append(errs, fmt.Errorf("renewInterval: %v, must be less than duration minus margin (%v)", opts.RenewInterval, opts.Duration-opts.Margin))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("lease options: %w", errors.Join(errs...))
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Manager{
		opts: opts,
		log:  log.With(zap.String("holder", opts.Holder)),
		busy: map[string]bool{},
	}, nil
}

// Holder returns this manager's holder identity.
func (m *Manager) Holder() string { return m.opts.Holder }

// NewHolderIdentity returns the host name plus a random suffix: a new
// identity for every process start, so that two processes (or one process
// before and after a restart) never mistake each other's lease for their
// own.
func NewHolderIdentity() (string, error) {
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("holder identity: %w", err)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("holder identity: %w", err)
	}
	return host + "-" + hex.EncodeToString(b[:]), nil
}

// Acquire takes the named lease, or returns a *HeldError when another live
// holder (or another run of this process) has it. The returned Held's
// context is derived from ctx; cancelling ctx stops the renewals without
// releasing the lease (as a crash would), so call Release in any case.
func (m *Manager) Acquire(ctx context.Context, name string) (*Held, error) {
	if name == "" {
		return nil, errors.New("acquire lease: empty name")
	}
	m.mu.Lock()
	if m.busy[name] {
		m.mu.Unlock()
		return nil, &HeldError{Name: name, Holder: m.opts.Holder + " (this process)"}
	}
	m.busy[name] = true
	m.mu.Unlock()

	at, err := m.opts.Backend.TryAcquire(ctx, name, m.opts.Holder, m.opts.Duration)
	if err != nil {
		m.forget(name)
		if he, ok := errors.AsType[*HeldError](err); ok {
			he.Retry = max(m.opts.Duration-he.Age, 0) + m.opts.RenewInterval
			return nil, err
		}
		return nil, fmt.Errorf("acquire lease %q: %w", name, err)
	}
	d := at.Add(m.opts.Duration - m.opts.Margin)
	if now := m.opts.Clock.Now(); passed(now, d) {
		// The acquisition itself took so long that no time is left: a
		// lease we cannot prove is not held.
		rerr := m.opts.Backend.Release(ctx, name, m.opts.Holder)
		m.forget(name)
		return nil, errors.Join(fmt.Errorf("acquire lease %q: %w: deadline %s passed while acquiring", name, ErrExpired, d.Round(0).Format(time.RFC3339Nano)), rerr)
	}

	hctx, cancel := context.WithCancelCause(ctx)
	h := &Held{
		m:        m,
		name:     name,
		ctx:      hctx,
		cancel:   cancel,
		log:      m.log.With(zap.String("lease", name)),
		acquired: at.Round(0),
	}
	h.deadline.Store(&d)
	if r := m.opts.Recorder; r != nil {
		r.Acquired(name)
		r.Held(name, true)
	}
	h.log.Info("lease acquired", zap.Time("deadline", d.Round(0)))
	// The timers start here, not in the goroutines, so that they count
	// from the acquisition.
	timer := m.opts.Clock.NewTimer(m.opts.RenewInterval)
	ticker := m.opts.Clock.NewTicker(checkInterval)
	h.wg.Add(2)
	go h.renewLoop(timer)
	go h.watchLoop(ticker)
	return h, nil
}

func (m *Manager) forget(name string) {
	m.mu.Lock()
	delete(m.busy, name)
	m.mu.Unlock()
}

// passed reports whether now is at or after deadline, by the wall clock or,
// when both carry one, by the monotonic clock: the wall clock catches a
// suspended machine (monotonic time stops), the monotonic one a wall clock
// set back.
func passed(now, deadline time.Time) bool {
	return !now.Round(0).Before(deadline.Round(0)) || !now.Before(deadline)
}

// Held is a lease this process holds. Holding one proves that the lease was
// acquired; Check proves it is still valid.
type Held struct {
	m      *Manager
	name   string
	ctx    context.Context
	cancel context.CancelCauseFunc
	log    *zap.Logger
	// acquired is when the lease started counting as held (TryAcquire's
	// time).
	acquired time.Time

	deadline atomic.Pointer[time.Time]
	failed   atomic.Pointer[failure]
	// renewErr is the last renewal's error, nil after a success.
	renewErr atomic.Pointer[error]

	wg          sync.WaitGroup
	releaseOnce sync.Once
	releaseErr  error
}

// failure is why a Held stopped being valid; the first one sticks.
type failure struct {
	reason string // a Reason constant, or "" for Release
	err    error
}

// valid reports whether Acquire made h.
func (h *Held) valid() bool { return h != nil && h.m != nil && h.ctx != nil }

// Name returns the lease's name ("" for a Held that Acquire did not make).
func (h *Held) Name() string {
	if h == nil {
		return ""
	}

	return h.name
}

// Context returns a context derived from Acquire's, cancelled the moment the
// lease can no longer be proven, with a cause wrapping ErrExpired (the
// deadline passed, also after failed renewals) or ErrLost (taken by
// another holder); and by Release (cause ErrReleased).
//
// A Held that Acquire did not make returns a context that is already
// cancelled with cause ErrNotHeld.
func (h *Held) Context() context.Context {
	if !h.valid() {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(ErrNotHeld)

		return ctx
	}

	return h.ctx
}

// Acquired returns the wall-clock time from which this process holds the
// lease: the time just before the backend write that took it. Every earlier
// holder's deadline had passed by then. It is the zero time for a Held that
// Acquire did not make.
func (h *Held) Acquired() time.Time {
	if !h.valid() {
		return time.Time{}
	}

	return h.acquired
}

// Deadline returns the wall-clock time at which the lease stops being valid
// unless renewed: the time of the last successful acquire or renewal (read
// just before the backend's write) plus Duration minus Margin.
// It is the zero time for a Held that Acquire did not make.
func (h *Held) Deadline() time.Time {
	if !h.valid() {
		return time.Time{}
	}

	return h.deadline.Load().Round(0)
}

// Check returns nil while the lease is valid: not lost, not released, and
// the wall clock before Deadline. Otherwise it returns an error wrapping
// ErrExpired, ErrLost or ErrReleased, and (the first time) cancels Context.
// It reads the clock and two atomics, takes no lock and does no I/O, so the
// storage fencing wrapper calls it before every write and delete: a process
// resumed after a pause fails its next write even before the watchdog has
// run. Once Check has failed it never succeeds again. A Held that Acquire
// did not make (nil, or the zero value) fails with ErrNotHeld.
func (h *Held) Check() error {
	if !h.valid() {
		return ErrNotHeld
	}

	if f := h.failed.Load(); f != nil {
		return f.err
	}
	now := h.m.opts.Clock.Now()
	d := h.deadline.Load()
	if !passed(now, *d) {
		return nil
	}
	return h.expire(*d)
}

// expire marks the lease expired at deadline d and returns the (first)
// failure.
func (h *Held) expire(d time.Time) error {
	reason, err := ReasonExpired, fmt.Errorf("lease %q: %w at %s", h.name, ErrExpired, d.Round(0).Format(time.RFC3339Nano))
	if last := h.renewErr.Load(); last != nil {
		reason = ReasonRenewFailed
		err = fmt.Errorf("lease %q: %w at %s (last renewal failed: %w)", h.name, ErrExpired, d.Round(0).Format(time.RFC3339Nano), *last)
	}
	h.lose(reason, err)
	return h.failed.Load().err
}

// lose records the first failure: counts it, cancels the context and logs
// it. Check fails from the moment failed is set, before anything else here,
// so counting first costs no safety; and whoever sees the context end (a
// run's caller, a test) then finds the loss already counted.
func (h *Held) lose(reason string, err error) {
	if !h.failed.CompareAndSwap(nil, &failure{reason: reason, err: err}) {
		return
	}
	if r := h.m.opts.Recorder; r != nil {
		r.Lost(h.name, reason)
		r.Held(h.name, false)
	}
	h.cancel(err)
	h.log.Warn("lease lost", zap.String("reason", reason), zap.Error(err))
}

// renewLoop renews every RenewInterval and retries a failed renewal sooner,
// until the context ends (the watchdog or Check cancels it at the
// deadline, whatever the renewals do).
func (h *Held) renewLoop(timer clock.Timer) {
	defer h.wg.Done()
	o := &h.m.opts
	retry := max(o.RenewInterval/4, min(o.RenewInterval, 100*time.Millisecond))
	defer timer.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-timer.C():
		}
		// A lease that lapsed while we waited (a pause, a suspended
		// machine) is never renewed back to life: someone may have taken
		// it in between.
		if h.Check() != nil {
			return
		}
		// Bound the attempt, so that a hanging request leaves time to retry.
		actx, cancel := context.WithTimeout(h.ctx, o.RenewInterval)
		at, err := o.Backend.Renew(actx, h.name, o.Holder, o.Duration)
		cancel()
		next := o.RenewInterval
		switch {
		case err == nil:
			if h.Check() != nil {
				// Passed while the renewal was in flight: too late.
				h.hook(nil)
				return
			}
			d := at.Add(o.Duration - o.Margin)
			h.deadline.Store(&d)
			h.renewErr.Store(nil)
			h.log.Debug("lease renewed", zap.Time("deadline", d.Round(0)))
		case errors.Is(err, ErrLost):
			h.lose(ReasonTaken, fmt.Errorf("lease %q: %w", h.name, err))
			h.hook(err)
			return
		case h.ctx.Err() != nil:
			h.hook(err)
			return
		default:
			h.renewErr.Store(&err)
			h.log.Warn("lease renewal failed", zap.Error(err), zap.Time("deadline", h.Deadline()), zap.Duration("retry_in", retry))
			next = retry
		}
		timer.Reset(next)
		h.hook(err)
	}
}

func (h *Held) hook(err error) {
	if f := h.m.testHookRenewed; f != nil {
		f(h.name, err)
	}
}

// Bound returns a context derived from parent that ends when the lease can
// no longer be proven: when Context ends (lost, released, or the watchdog
// saw the deadline pass) and also exactly at Deadline by the lease's clock,
// without waiting for the watchdog's next tick. A renewal that moved the
// deadline keeps the context alive. Call stop when done, to release its
// timer. For a Held that Acquire did not make the context is already
// cancelled with ErrNotHeld.
//
// Bound exists for calls whose own context is not the lease's (kopia runs
// some storage calls under context.WithoutCancel): deriving their context
// from Bound makes them end with the lease whatever context they were given.
func (h *Held) Bound(parent context.Context) (ctx context.Context, stop context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)

	if err := h.Check(); err != nil {
		cancel(err)

		return ctx, func() {}
	}

	unhook := context.AfterFunc(h.ctx, func() { cancel(context.Cause(h.ctx)) })

	go func() {
		clk := h.m.opts.Clock

		for {
			// The deadline may have moved since the timer was set (a
			// renewal): only a failing Check ends the context. A passing
			// Check leaves a positive time to the deadline.
			if err := h.Check(); err != nil {
				cancel(err)
				return
			}

			t := clk.NewTimer(h.Deadline().Sub(clk.Now()))

			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
		}
	}()

	return ctx, func() {
		unhook()
		cancel(context.Canceled)
	}
}

// watchLoop reads the wall clock every second and cancels the lease once
// its deadline has passed. Timers and tickers run on the monotonic clock,
// which stops while a machine sleeps; this catches the wake-up within a
// second.
func (h *Held) watchLoop(ticker clock.Ticker) {
	defer h.wg.Done()
	defer ticker.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-ticker.C():
			if h.Check() != nil {
				return
			}
		}
	}
}

// Release stops the renewals, waits for the lease's goroutines and gives
// the lease up in the backend so the next holder need not wait. After it,
// Check fails with ErrReleased. It is idempotent: later calls return the
// first one's result. Releasing a Held that Acquire did not make returns
// ErrNotHeld.
func (h *Held) Release(ctx context.Context) error {
	if !h.valid() {
		return ErrNotHeld
	}

	h.releaseOnce.Do(func() {
		if h.failed.Load() == nil {
			if d := h.deadline.Load(); passed(h.m.opts.Clock.Now(), *d) {
				h.lose(ReasonReleasedLate, fmt.Errorf("lease %q: %w at %s, before it was released", h.name, ErrExpired, d.Round(0).Format(time.RFC3339Nano)))
			}
		}
		wasValid := h.failed.CompareAndSwap(nil, &failure{err: fmt.Errorf("lease %q: %w", h.name, ErrReleased)})
		h.cancel(ErrReleased)
		h.wg.Wait()
		if err := h.m.opts.Backend.Release(ctx, h.name, h.m.opts.Holder); err != nil {
			h.releaseErr = fmt.Errorf("release lease %q: %w", h.name, err)
		}
		h.m.forget(h.name)
		if wasValid {
			if r := h.m.opts.Recorder; r != nil {
				r.Held(h.name, false)
			}
		}
		if h.releaseErr == nil {
			h.log.Info("lease released")
		}
	})
	return h.releaseErr
}
