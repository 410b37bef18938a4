package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	chainfs "github.com/chainfs/chainfs/fs"
	"github.com/chainfs/chainfs/layers"
)

// logCacheStatsOnSignal logs the chain cache's counters each time the
// server gets SIGUSR1, as daemons such as dnsmasq dump their caches: how
// often reads found compressed clusters inflated in memory, what
// read-ahead did, and the most view reads served at once.
// tests/bench/compare.sh reads them around each run.
func logCacheStatsOnSignal(log logrus.FieldLogger, cache *layers.Cache) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		for range ch {
			logCacheStats(log, cache)
		}
	}()
}

func logCacheStats(log logrus.FieldLogger, cache *layers.Cache) {
	s := cache.Stats()
	log.WithFields(logrus.Fields{
		"cluster_hits":       s.ClusterHits,
		"cluster_misses":     s.ClusterMisses,
		"readahead_clusters": s.ReadAheadClusters,
		"readahead_hits":     s.ReadAheadHits,
		"readahead_unused":   s.ReadAheadUnused,
		"cluster_bytes":      s.ClusterBytes,
		"readahead_bytes":    s.ReadAheadBytes,
		"reads_at_once_peak": chainfs.PeakConcurrentReads(),
	}).Info("cache statistics")
}
