package runckitshim

import (
	"context"
	"sync"

	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// orderedPublisher forwards events to containerd from one goroutine, in the
// order Publish was called, without making the caller wait for containerd.
// runckit's Delete waits until the container's events have reached the
// sink; forwarding synchronously made it wait for containerd itself, and
// while containerd restarts each forward waits seconds to dial, longer than
// the 5 s containerd gives the Delete of a task it reaps as it loads shims.
type orderedPublisher struct {
	pub  shim.Publisher
	wake chan struct{} // one pending wake-up for the forwarder
	done chan struct{} // closed when the forwarder has drained and stopped

	mu     sync.Mutex
	queue  []queuedEvent
	closed bool
}

type queuedEvent struct {
	ctx   context.Context
	topic string
	event events.Event
}

func newOrderedPublisher(pub shim.Publisher) *orderedPublisher {
	p := &orderedPublisher{pub: pub, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go p.forward()
	return p
}

// Publish queues the event for containerd; it fails only after Close.
func (p *orderedPublisher) Publish(ctx context.Context, topic string, event events.Event) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errdefs.ErrUnavailable.WithMessage("shim shutting down: event not published")
	}
	p.queue = append(p.queue, queuedEvent{ctx: ctx, topic: topic, event: event})
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

func (p *orderedPublisher) forward() {
	defer close(p.done)
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			closed := p.closed
			p.mu.Unlock()
			if closed {
				return
			}
			<-p.wake
			continue
		}
		e := p.queue[0]
		p.queue[0] = queuedEvent{}
		p.queue = p.queue[1:]
		p.mu.Unlock()
		if err := p.pub.Publish(e.ctx, e.topic, e.event); err != nil {
			log.G(e.ctx).WithError(err).WithField("topic", e.topic).Error("runckit shim: publish event")
		}
	}
}

// Close forwards what is queued (until ctx ends), then closes containerd's
// publisher. It is the shim's shutdown callback: the last TaskDelete must
// not be lost when the shim exits.
func (p *orderedPublisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		log.G(ctx).Warn("runckit shim: events still queued at shutdown")
	}
	return p.pub.Close()
}
