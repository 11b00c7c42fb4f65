package runckit

// SetExecSeq sets the counter behind the exec IDs of Cmd runs, so that an
// external test can make the next generated ID collide with one it holds.
func SetExecSeq(n uint64) { execSeq.Store(n) }

// SaveRecord writes c's record as every state change does.
func (c *Container) SaveRecord() { c.saveRecord() }

// SetRecordWriteHook runs hook before each record write until the test ends.
func SetRecordWriteHook(t interface{ Cleanup(func()) }, hook func()) {
	recordWriteHook = hook
	t.Cleanup(func() { recordWriteHook = nil })
}

// InitExitHeld reports whether init has died and its exit is held back for
// execs (Status still says running then).
func (c *Container) InitExitHeld() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.initPending
}
