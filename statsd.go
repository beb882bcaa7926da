package main

// The raw UDP statsd emitter (https://github.com/statsd/statsd/blob/master/docs/metric_types.md)
// that never blocks the request path: lines are appended to a packet under a
// short lock, full packets go to a sender goroutine through a bounded queue,
// and whatever does not fit is dropped and counted.

import (
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxPacketBytes keeps a datagram inside one 1500-byte Ethernet frame
	// (minus IP and UDP headers): losing one fragment loses the whole datagram.
	maxPacketBytes = 1432
	// packetQueueLen bounds the packets waiting for the sender.
	packetQueueLen = 64
	// defaultFlushInterval is how often a partial packet is sent.
	defaultFlushInterval = time.Second
)

// statsdDroppedName is the counter the emitter reports its own dropped
// lines under (metricTable's mStatsdDropped).
const statsdDroppedName = "metrics.dropped"

// statsdEmitter emits statsd lines. A nil *statsdEmitter does nothing, so
// call sites need no checks when statsd is off. Methods never block and
// never return errors.
type statsdEmitter struct {
	// prefix ends with '.', e.g. "s3helper.".
	prefix string
	// tags is the DogStatsD suffix, e.g. "|#env:prod", or empty.
	tags string

	mu  sync.Mutex // guards buf
	buf []byte

	queue   chan []byte
	free    chan []byte
	dropped atomic.Int64
	// reportedDrops is the part of dropped already emitted; only the
	// sendLoop goroutine uses it.
	reportedDrops int64

	gaugesMu sync.Mutex // guards gauges
	gauges   []gaugeFunc

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	w         io.WriteCloser
}

// gaugeFunc is a gauge read at every flush.
type gaugeFunc struct {
	name string
	read func() int64
}

// newStatsdEmitter starts an emitter writing packets to w (a connected UDP socket
// in production). prefix is prepended with a '.'; tags are DogStatsD
// "k:v,k2:v2" or empty. flush is the flush interval (zero: 1 s).
func newStatsdEmitter(w io.WriteCloser, prefix, tags string, flush time.Duration) *statsdEmitter {
	if flush <= 0 {
		flush = defaultFlushInterval
	}
	m := &statsdEmitter{
		w:     w,
		queue: make(chan []byte, packetQueueLen),
		free:  make(chan []byte, packetQueueLen),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		buf:   make([]byte, 0, maxPacketBytes),
	}
	if prefix != "" {
		m.prefix = prefix + "."
	}
	if tags != "" {
		m.tags = "|#" + tags
	}
	go m.sendLoop(flush)
	return m
}

// Count adds v to a counter. Dimensions such as method and status are
// name segments (requests.GET.200), so plain statsd, collectd and
// nri-statsd all keep them apart.
func (m *statsdEmitter) Count(name string, v int64) { m.emit(name, v, "|c") }

// Timing records a duration in milliseconds.
func (m *statsdEmitter) Timing(name string, d time.Duration) {
	m.emit(name, d.Milliseconds(), "|ms")
}

// Gauge sets a gauge.
func (m *statsdEmitter) Gauge(name string, v int64) { m.emit(name, v, "|g") }

// GaugeFunc registers a gauge read at every flush.
func (m *statsdEmitter) GaugeFunc(name string, read func() int64) {
	if m == nil {
		return
	}
	m.gaugesMu.Lock()
	m.gauges = append(m.gauges, gaugeFunc{name, read})
	m.gaugesMu.Unlock()
}

// emit appends "prefix.name:v|type[|#tags]\n" to the packet, sending the
// packet first when the line would not fit.
func (m *statsdEmitter) emit(name string, v int64, kind string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	start := len(m.buf)
	m.buf = appendLine(m.buf, m.prefix, name, v, kind, m.tags)
	if len(m.buf) > maxPacketBytes && start > 0 {
		line := append([]byte(nil), m.buf[start:]...)
		m.buf = m.buf[:start]
		m.sendLocked()
		m.buf = append(m.buf, line...)
	}
	if len(m.buf) > maxPacketBytes { // a single oversized line: never sendable
		m.buf = m.buf[:0]
		m.dropped.Add(1)
	}
	m.mu.Unlock()
}

// appendLine formats one statsd line with strconv only.
func appendLine(dst []byte, prefix, name string, v int64, kind, tags string) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, name...)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, v, 10)
	dst = append(dst, kind...)
	dst = append(dst, tags...)
	return append(dst, '\n')
}

// sendLocked hands the packet to the sender without blocking; a full queue
// drops it and counts its lines. m.mu must be held.
func (m *statsdEmitter) sendLocked() {
	if len(m.buf) == 0 {
		return
	}
	packet := m.buf
	select {
	case m.queue <- packet:
		select {
		case m.buf = <-m.free:
			m.buf = m.buf[:0]
		default:
			m.buf = make([]byte, 0, maxPacketBytes)
		}
	default:
		m.dropped.Add(int64(countLines(packet)))
		m.buf = m.buf[:0]
	}
}

// Dropped returns how many lines were dropped so far.
func (m *statsdEmitter) Dropped() int64 {
	if m == nil {
		return 0
	}
	return m.dropped.Load()
}

// sendLoop writes queued packets and flushes on the ticker until Close.
func (m *statsdEmitter) sendLoop(flush time.Duration) {
	defer close(m.done)
	ticker := time.NewTicker(flush)
	defer ticker.Stop()
	for {
		select {
		case p := <-m.queue:
			m.write(p)
		case <-ticker.C:
			m.flush()
		case <-m.stop:
			m.flush()
			for {
				select {
				case p := <-m.queue:
					m.write(p)
				default:
					return
				}
			}
		}
	}
}

// write sends one packet; a write error (no listener, full socket buffer)
// drops it, which is what UDP would do anyway.
func (m *statsdEmitter) write(p []byte) {
	if _, err := m.w.Write(p); err != nil {
		m.dropped.Add(int64(countLines(p)))
	}
	select {
	case m.free <- p:
	default:
	}
}

// countLines counts the statsd lines in a packet.
func countLines(p []byte) int {
	n := 0
	for _, c := range p {
		if c == '\n' {
			n++
		}
	}
	return n
}

// flush reads the registered gauges and sends the partial packet.
func (m *statsdEmitter) flush() {
	m.gaugesMu.Lock()
	gauges := append([]gaugeFunc(nil), m.gauges...)
	m.gaugesMu.Unlock()
	for _, g := range gauges {
		m.Gauge(g.name, g.read())
	}
	if total := m.dropped.Load(); total > m.reportedDrops {
		m.Count(statsdDroppedName, total-m.reportedDrops)
		m.reportedDrops = total
	}
	m.mu.Lock()
	m.sendLocked()
	m.mu.Unlock()
}

// Close flushes what is buffered, stops the sender and closes the socket.
// It is idempotent.
func (m *statsdEmitter) Close() error {
	if m == nil {
		return nil
	}
	var err error
	m.closeOnce.Do(func() {
		close(m.stop)
		<-m.done
		err = m.w.Close()
	})
	return err
}
