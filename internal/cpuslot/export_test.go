package cpuslot

// Held is how many slots are held now.
func (l *Limiter) Held() int { return len(l.slots) }
