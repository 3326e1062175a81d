"""The driver crash of issue 14 (SIGILL, "Recursive call to lock Mutex"): an actor call
whose argument is the result of a task, after other actors were created. Kept as a
regression check: scripts/repro-loop.sh runs it many times in a row."""
import swiftray as ray

ray.init(num_cpus=4)


@ray.remote
class Counter:
    def __init__(self):
        self.value = 0

    def incr(self, by=1):
        self.value += by
        return self.value


@ray.remote
class Holder:
    def __init__(self, a, b=0, *, c=0):
        self.data = (a, b, c)

    def get(self):
        return self.data


@ray.remote
def produce():
    return 99


h = Holder.remote(ray.put([1, 2]), b=ray.put("b"), c=3)
assert ray.get(h.get.remote()) == ([1, 2], "b", 3)
c = Counter.remote()
assert ray.get(c.incr.remote(produce.remote())) == 99  # an actor call whose argument is a task's result
print("ok")
