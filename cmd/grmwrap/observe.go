package main

import (
	"errors"
	"time"

	"github.com/grmwrap/grmwrap/generations"
)

// observer hears the supervisor's life events: systemd's notify protocol
// and the metrics listen to them.
type observer interface {
	// ready: generation 1 is ready (err nil) or not (err says why).
	ready(err error)
	upgradeStarted()
	// upgradeDone reports an upgrade's result and how long it took.
	upgradeDone(gen uint32, err error, took time.Duration)
	stopping()
}

// observers fans events out.
type observers []observer

func (o observers) ready(err error) {
	for _, x := range o {
		x.ready(err)
	}
}

func (o observers) upgradeStarted() {
	for _, x := range o {
		x.upgradeStarted()
	}
}

func (o observers) upgradeDone(gen uint32, err error, took time.Duration) {
	for _, x := range o {
		x.upgradeDone(gen, err, took)
	}
}

func (o observers) stopping() {
	for _, x := range o {
		x.stopping()
	}
}

// upgradeResult names an upgrade's outcome for metrics and logs.
func upgradeResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, generations.ErrUpgradeInProgress):
		return "refused_in_progress"
	case errors.Is(err, generations.ErrNotRunning):
		return "refused_not_running"
	}
	return "rolled_back"
}
