const BASE_URL = "http://localhost:8000";
const TOKEN = "your-jwt-token";

// Create build
async function createBuild() {
  const response = await fetch(`${BASE_URL}/api/build/`, {
    method: "POST",
    headers: {
      "Authorization": `Bearer ${TOKEN}`,
      "Content-Type": "application/json"
    },
    body: JSON.stringify({
      project_name: "my-app",
      goal: "Add authentication"
    })
  });
  
  return await response.json();
}

// Connect WebSocket
async function monitorBuild(taskId) {
  const ws = new WebSocket(
    `ws://localhost:8000/api/ws/build/${taskId}?token=${TOKEN}`
  );
  
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    console.log(`Progress: ${message.progress}%`);
  };
}
