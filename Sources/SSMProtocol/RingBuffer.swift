/// A growable FIFO with O(1) append and removal at the front, for the resend buffer.
struct RingBuffer<Element: Sendable>: Sendable, Sequence {
    private var storage: [Element?] = []
    private var head = 0
    private(set) var count = 0

    var isEmpty: Bool { self.count == 0 }

    mutating func append(_ element: Element) {
        if self.count == self.storage.count {
            self.grow()
        }
        self.storage[(self.head + self.count) % self.storage.count] = element
        self.count += 1
    }

    var first: Element? {
        get { self.isEmpty ? nil : self.storage[self.head] }
        set {
            guard !self.isEmpty, let newValue else { return }
            self.storage[self.head] = newValue
        }
    }

    func firstIndex(where predicate: (Element) -> Bool) -> Int? {
        for offset in 0..<self.count where predicate(self.storage[(self.head + offset) % self.storage.count]!) {
            return offset
        }
        return nil
    }

    /// Removes the element `offset` places from the front. O(1) at the front, O(n) elsewhere.
    mutating func remove(at offset: Int) -> Element {
        precondition(offset >= 0 && offset < self.count)
        let capacity = self.storage.count
        let index = (self.head + offset) % capacity
        let element = self.storage[index]!
        if offset == 0 {
            self.storage[index] = nil
            self.head = (self.head + 1) % capacity
        } else {
            var position = offset
            while position < self.count - 1 {
                self.storage[(self.head + position) % capacity] = self.storage[(self.head + position + 1) % capacity]
                position += 1
            }
            self.storage[(self.head + self.count - 1) % capacity] = nil
        }
        self.count -= 1
        return element
    }

    private mutating func grow() {
        let newCapacity = Swift.max(16, self.storage.count * 2)
        var newStorage = [Element?](repeating: nil, count: newCapacity)
        for offset in 0..<self.count {
            newStorage[offset] = self.storage[(self.head + offset) % self.storage.count]
        }
        self.storage = newStorage
        self.head = 0
    }

    func makeIterator() -> AnyIterator<Element> {
        var offset = 0
        return AnyIterator {
            guard offset < self.count else { return nil }
            defer { offset += 1 }
            return self.storage[(self.head + offset) % self.storage.count]
        }
    }
}
