import requests

class AgentTaskTracker:
    def __init__(self, base_url, api_key):
        self.base_url = base_url
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}

    def start_task(self, project, task, task_id, agent, metadata=None):
        data = {
            "project": project,
            "task": task,
            "task_id": task_id,
            "agent": agent,
            "metadata": metadata or {}
        }
        response = requests.post(
            f"{self.base_url}/webhook/start",
            headers=self.headers,
            json=data
        )
        return response.json()

    def finish_task(self, project, task, task_id, agent, result, duration, metadata=None):
        data = {
            "project": project,
            "task": task,
            "task_id": task_id,
            "agent": agent,
            "result": result,
            "duration_seconds": duration,
            "metadata": metadata or {}
        }
        response = requests.post(
            f"{self.base_url}/webhook/finish",
            headers=self.headers,
            json=data
        )
        return response.json()

# Использование
tracker = AgentTaskTracker("http://localhost:8000", "your-api-key")
tracker.start_task("my-project", "Test task", "task-001", "test-agent")
